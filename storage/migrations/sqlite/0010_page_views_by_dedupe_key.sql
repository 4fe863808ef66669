-- page_views again (as 0008 made it), now that an event id no longer names one row: two events that
-- share an id but not a device creation time are both stored (0009). The view joined a page view to
-- its pings and aggregates by the event id alone, so such a pair counted each other's pings. Each
-- row is now named by its dedupe key, the event id and `ck` (its dvce_created_tstamp, '' when none),
-- which the store keeps unique; a ping that names its page view by the web_page id goes to the first
-- page view with that id, and ties in time are broken by the key. `sessions` and `users` read
-- page_views by name: unchanged.
DROP VIEW page_views;
CREATE VIEW page_views AS
WITH ev AS (
    SELECT e.event_id, COALESCE(e.dvce_created_tstamp, '') AS ck,
           e.event, e.app_id, e.anonymous, e.network_userid, e.user_id, e.domain_sessionid,
           -- CAST: a CASE has no affinity, and a join of it to a TEXT column could use no index
           CAST(CASE WHEN e.anonymous = 1 THEN e.domain_sessionid ELSE e.session_id END AS TEXT) AS session_key,
           CASE WHEN e.anonymous = 1 THEN 'a:' || COALESCE(e.domain_sessionid, '')
                ELSE 'd:' || COALESCE(e.network_userid, '') END AS owner,
           -- paths into the row's own JSON: an entity that is not an object gives NULL, never an error
           (SELECT json_extract(e.contexts, c.fullkey || '.data.id') FROM json_each(e.contexts, '$.data') c
            WHERE json_extract(e.contexts, c.fullkey || '.schema')
                  LIKE 'iglu:com.snowplowanalytics.snowplow/web_page/%'
            LIMIT 1) AS web_page_id,
           COALESCE(e.derived_tstamp, e.collector_tstamp) AS t,
           CAST(strftime('%s', COALESCE(e.dvce_created_tstamp, e.collector_tstamp)) AS INTEGER) / 10 AS bucket,
           e.page_url, e.page_title, e.page_urlscheme, e.page_urlhost, e.page_urlpath, e.page_urlquery,
           e.page_referrer, e.refr_urlhost, e.refr_urlpath,
           e.mkt_medium, e.mkt_source, e.mkt_term, e.mkt_content, e.mkt_campaign,
           e.pp_xoffset_max, e.pp_yoffset_max, e.br_viewwidth, e.br_viewheight, e.doc_width, e.doc_height
    FROM events e WHERE e.event IN ('pv', 'pp')
), seq AS (  -- per session, the number of page views so far: a ping's is that of the view before it
    SELECT event_id, ck, event, session_key, page_url,
           SUM(CASE WHEN event = 'pv' THEN 1 ELSE 0 END) OVER (
               PARTITION BY session_key ORDER BY t, CASE WHEN event = 'pv' THEN 0 ELSE 1 END, event_id, ck
               ROWS UNBOUNDED PRECEDING) AS n
    FROM ev WHERE session_key IS NOT NULL AND (event = 'pv' OR web_page_id IS NULL)
), named AS (  -- the page view a web_page id names: the first with it, should a replay share it
    SELECT event_id, ck, web_page_id, owner FROM (
        SELECT event_id, ck, web_page_id, owner,
               ROW_NUMBER() OVER (PARTITION BY web_page_id, owner ORDER BY t, event_id, ck) AS k
        FROM ev WHERE event = 'pv' AND web_page_id IS NOT NULL) f
    WHERE k = 1
), pings AS (
    SELECT v.event_id AS view_id, v.ck AS view_ck, p.* FROM named v JOIN ev p
        ON p.web_page_id = v.web_page_id AND p.owner = v.owner
    WHERE p.event = 'pp'
    UNION ALL
    SELECT v.event_id, v.ck, p.* FROM seq sv JOIN seq sp ON sp.session_key = sv.session_key AND sp.n = sv.n
        JOIN ev v ON v.event_id = sv.event_id AND v.ck = sv.ck
        JOIN ev p ON p.event_id = sp.event_id AND p.ck = sp.ck
    WHERE sv.event = 'pv' AND sp.event = 'pp' AND sp.page_url IS sv.page_url
), agg AS (
    SELECT view_id, view_ck, COUNT(*) AS ping_count, COUNT(DISTINCT bucket) AS buckets, MAX(t) AS last_t,
           MAX(pp_xoffset_max) AS x_max, MAX(pp_yoffset_max) AS y_max, MAX(br_viewwidth) AS view_w,
           MAX(br_viewheight) AS view_h, MAX(doc_width) AS doc_w, MAX(doc_height) AS doc_h
    FROM pings GROUP BY view_id, view_ck
), sized AS (
    SELECT v.*, a.ping_count, a.buckets, a.last_t, a.x_max, a.y_max,
           CASE WHEN v.br_viewwidth IS NULL THEN a.view_w WHEN a.view_w IS NULL THEN v.br_viewwidth
                ELSE max(v.br_viewwidth, a.view_w) END AS view_w,
           CASE WHEN v.br_viewheight IS NULL THEN a.view_h WHEN a.view_h IS NULL THEN v.br_viewheight
                ELSE max(v.br_viewheight, a.view_h) END AS view_h,
           CASE WHEN v.doc_width IS NULL THEN a.doc_w WHEN a.doc_w IS NULL THEN v.doc_width
                ELSE max(v.doc_width, a.doc_w) END AS doc_w,
           CASE WHEN v.doc_height IS NULL THEN a.doc_h WHEN a.doc_h IS NULL THEN v.doc_height
                ELSE max(v.doc_height, a.doc_h) END AS doc_h
    FROM ev v LEFT JOIN agg a ON a.view_id = v.event_id AND a.view_ck = v.ck WHERE v.event = 'pv'
)
SELECT COALESCE(web_page_id, event_id) AS page_view_id, event_id, session_key AS session_id,
       network_userid AS device_id, user_id, anonymous, app_id, domain_sessionid,
       page_url, page_title, page_urlscheme, page_urlhost, page_urlpath, page_urlquery,
       page_referrer, refr_urlhost, refr_urlpath,
       mkt_medium, mkt_source, mkt_term, mkt_content, mkt_campaign,
       t AS start_tstamp, CASE WHEN last_t > t THEN last_t ELSE t END AS end_tstamp,
       COALESCE(ping_count, 0) AS page_pings,
       CASE WHEN buckets > 0 THEN 10 * (buckets - 1) + 5 ELSE 0 END AS engaged_time_in_s,
       CASE WHEN x_max IS NOT NULL AND view_w IS NOT NULL AND doc_w > 0
            THEN CAST(ROUND(100.0 * min(max(x_max, 0) + view_w, doc_w) / doc_w) AS INTEGER) END
           AS horizontal_percentage_scrolled,
       CASE WHEN y_max IS NOT NULL AND view_h IS NOT NULL AND doc_h > 0
            THEN CAST(ROUND(100.0 * min(max(y_max, 0) + view_h, doc_h) / doc_h) AS INTEGER) END
           AS vertical_percentage_scrolled
FROM sized;
