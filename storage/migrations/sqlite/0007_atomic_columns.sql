-- The rest of the tracker-sent columns of Snowplow's atomic.events, same names and meanings
-- (collector/events.py fills them). Rows stored before this migration keep those values in
-- other_params (pp_mix, vp, res, ...) and NULL here: the store is append-only, nothing is rewritten.
-- ADD COLUMN with no default only changes the schema: no existing row is touched.
ALTER TABLE events ADD COLUMN pp_xoffset_min INTEGER;
ALTER TABLE events ADD COLUMN pp_xoffset_max INTEGER;
ALTER TABLE events ADD COLUMN pp_yoffset_min INTEGER;
ALTER TABLE events ADD COLUMN pp_yoffset_max INTEGER;
ALTER TABLE events ADD COLUMN br_cookies INTEGER;  -- cookie: 1/0 (PostgreSQL: boolean)
ALTER TABLE events ADD COLUMN br_colordepth TEXT;
ALTER TABLE events ADD COLUMN br_viewwidth INTEGER;  -- vp 'WxH'
ALTER TABLE events ADD COLUMN br_viewheight INTEGER;
ALTER TABLE events ADD COLUMN dvce_screenwidth INTEGER;  -- res 'WxH'
ALTER TABLE events ADD COLUMN dvce_screenheight INTEGER;
ALTER TABLE events ADD COLUMN doc_charset TEXT;
ALTER TABLE events ADD COLUMN doc_width INTEGER;  -- ds 'WxH'
ALTER TABLE events ADD COLUMN doc_height INTEGER;
ALTER TABLE events ADD COLUMN tr_orderid TEXT;
ALTER TABLE events ADD COLUMN tr_affiliation TEXT;
ALTER TABLE events ADD COLUMN tr_total REAL;
ALTER TABLE events ADD COLUMN tr_tax REAL;
ALTER TABLE events ADD COLUMN tr_shipping REAL;
ALTER TABLE events ADD COLUMN tr_city TEXT;
ALTER TABLE events ADD COLUMN tr_state TEXT;
ALTER TABLE events ADD COLUMN tr_country TEXT;
ALTER TABLE events ADD COLUMN tr_currency TEXT;
ALTER TABLE events ADD COLUMN ti_orderid TEXT;
ALTER TABLE events ADD COLUMN ti_sku TEXT;
ALTER TABLE events ADD COLUMN ti_name TEXT;
ALTER TABLE events ADD COLUMN ti_category TEXT;
ALTER TABLE events ADD COLUMN ti_price REAL;
ALTER TABLE events ADD COLUMN ti_quantity INTEGER;
ALTER TABLE events ADD COLUMN ti_currency TEXT;
ALTER TABLE events ADD COLUMN refr_domain_userid TEXT;  -- an identifier: the linking site's duid (`_sp` of page_url); never under SP-Anonymous
ALTER TABLE events ADD COLUMN refr_dvce_tstamp TEXT;  -- the time in `_sp`
ALTER TABLE events ADD COLUMN txn_id INTEGER;  -- tid
ALTER TABLE events ADD COLUMN event_format TEXT;  -- format of the self-describing event's schema (jsonschema)
ALTER TABLE events ADD COLUMN user_fingerprint TEXT;  -- an identifier (fp): never under SP-Anonymous
ALTER TABLE events ADD COLUMN derived_tstamp TEXT;  -- true_tstamp, else collector_tstamp - (dvce_sent_tstamp - dvce_created_tstamp)
ALTER TABLE events ADD COLUMN page_urlscheme TEXT;
ALTER TABLE events ADD COLUMN page_urlhost TEXT;
ALTER TABLE events ADD COLUMN page_urlport INTEGER;  -- defaulted from the scheme (80, 443) as Snowplow does
ALTER TABLE events ADD COLUMN page_urlpath TEXT;
ALTER TABLE events ADD COLUMN page_urlquery TEXT;
ALTER TABLE events ADD COLUMN page_urlfragment TEXT;
ALTER TABLE events ADD COLUMN refr_urlscheme TEXT;
ALTER TABLE events ADD COLUMN refr_urlhost TEXT;
ALTER TABLE events ADD COLUMN refr_urlport INTEGER;
ALTER TABLE events ADD COLUMN refr_urlpath TEXT;
ALTER TABLE events ADD COLUMN refr_urlquery TEXT;
ALTER TABLE events ADD COLUMN refr_urlfragment TEXT;
ALTER TABLE events ADD COLUMN mkt_medium TEXT;  -- utm_medium of page_url's query (and so on for the other mkt_*)
ALTER TABLE events ADD COLUMN mkt_source TEXT;
ALTER TABLE events ADD COLUMN mkt_term TEXT;
ALTER TABLE events ADD COLUMN mkt_content TEXT;
ALTER TABLE events ADD COLUMN mkt_campaign TEXT;
