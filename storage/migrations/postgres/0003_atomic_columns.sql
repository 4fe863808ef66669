-- The rest of the tracker-sent columns of Snowplow's atomic.events, same names and meanings
-- (collector/events.py fills them). Rows stored before this migration keep those values in
-- other_params (pp_mix, vp, res, ...) and NULL here: the store is append-only, nothing is rewritten.
-- ADD COLUMN on the partitioned table reaches every partition; with no default no row is rewritten.
ALTER TABLE events
    ADD COLUMN pp_xoffset_min integer,
    ADD COLUMN pp_xoffset_max integer,
    ADD COLUMN pp_yoffset_min integer,
    ADD COLUMN pp_yoffset_max integer,
    ADD COLUMN br_cookies boolean,  -- cookie: 1/0 (PostgreSQL: boolean)
    ADD COLUMN br_colordepth text,
    ADD COLUMN br_viewwidth integer,  -- vp 'WxH'
    ADD COLUMN br_viewheight integer,
    ADD COLUMN dvce_screenwidth integer,  -- res 'WxH'
    ADD COLUMN dvce_screenheight integer,
    ADD COLUMN doc_charset text,
    ADD COLUMN doc_width integer,  -- ds 'WxH'
    ADD COLUMN doc_height integer,
    ADD COLUMN tr_orderid text,
    ADD COLUMN tr_affiliation text,
    ADD COLUMN tr_total double precision,
    ADD COLUMN tr_tax double precision,
    ADD COLUMN tr_shipping double precision,
    ADD COLUMN tr_city text,
    ADD COLUMN tr_state text,
    ADD COLUMN tr_country text,
    ADD COLUMN tr_currency text,
    ADD COLUMN ti_orderid text,
    ADD COLUMN ti_sku text,
    ADD COLUMN ti_name text,
    ADD COLUMN ti_category text,
    ADD COLUMN ti_price double precision,
    ADD COLUMN ti_quantity integer,
    ADD COLUMN ti_currency text,
    ADD COLUMN refr_domain_userid text,  -- an identifier: the linking site's duid (`_sp` of page_url); never under SP-Anonymous
    ADD COLUMN refr_dvce_tstamp timestamptz,  -- the time in `_sp`
    ADD COLUMN txn_id integer,  -- tid
    ADD COLUMN event_format text,  -- format of the self-describing event's schema (jsonschema)
    ADD COLUMN user_fingerprint text,  -- an identifier (fp): never under SP-Anonymous
    ADD COLUMN derived_tstamp timestamptz,  -- true_tstamp, else collector_tstamp - (dvce_sent_tstamp - dvce_created_tstamp)
    ADD COLUMN page_urlscheme text,
    ADD COLUMN page_urlhost text,
    ADD COLUMN page_urlport integer,  -- defaulted from the scheme (80, 443) as Snowplow does
    ADD COLUMN page_urlpath text,
    ADD COLUMN page_urlquery text,
    ADD COLUMN page_urlfragment text,
    ADD COLUMN refr_urlscheme text,
    ADD COLUMN refr_urlhost text,
    ADD COLUMN refr_urlport integer,
    ADD COLUMN refr_urlpath text,
    ADD COLUMN refr_urlquery text,
    ADD COLUMN refr_urlfragment text,
    ADD COLUMN mkt_medium text,  -- utm_medium of page_url's query (and so on for the other mkt_*)
    ADD COLUMN mkt_source text,
    ADD COLUMN mkt_term text,
    ADD COLUMN mkt_content text,
    ADD COLUMN mkt_campaign text;
