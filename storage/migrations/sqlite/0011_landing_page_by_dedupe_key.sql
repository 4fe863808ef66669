-- page_views gains dvce_created_tstamp, its last column: with event_id it names the one stored event
-- a row is (the dedupe key, 0009). sessions broke a tie between two page views of one session at the
-- same event time by the event id alone, so when two such views shared their id too (a replay with
-- another device time, both stored) its landing page was whichever the sort met first; the tie is now
-- broken by the whole key, the earlier device creation time first (NULL, as '' in the key, before
-- any). Nothing else changes: users and devices read sessions by name, and stay as they are.
DROP VIEW sessions;
DROP VIEW page_views;
CREATE VIEW page_views AS
WITH ev AS (
    SELECT e.event_id, COALESCE(e.dvce_created_tstamp, '') AS ck, e.dvce_created_tstamp,
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
           AS vertical_percentage_scrolled,
       dvce_created_tstamp
FROM sized;

CREATE VIEW sessions AS
WITH s AS (
    SELECT session_id, network_userid AS device_id, session_index, MAX(user_id) AS own_user,
           MIN(collector_tstamp) AS started_at, MAX(collector_tstamp) AS ended_at, COUNT(*) AS event_count
    FROM events WHERE session_id IS NOT NULL GROUP BY session_id
), first_id AS (
    SELECT device_id, session_index AS first_index, own_user AS first_user FROM (
        SELECT device_id, session_index, own_user,
               ROW_NUMBER() OVER (PARTITION BY device_id ORDER BY session_index) AS n
        FROM s WHERE own_user IS NOT NULL) WHERE n = 1
), base AS (
    SELECT s.session_id, s.device_id,
           COALESCE(s.own_user, CASE WHEN s.session_index < f.first_index THEN f.first_user END) AS user_id,
           s.session_index, s.started_at, s.ended_at, s.event_count, 0 AS anonymous
    FROM s LEFT JOIN first_id f ON f.device_id = s.device_id
    UNION ALL
    SELECT domain_sessionid, NULL, NULL, MAX(domain_sessionidx), MIN(collector_tstamp), MAX(collector_tstamp),
           COUNT(*), 1
    FROM events WHERE anonymous = 1 AND domain_sessionid IS NOT NULL GROUP BY domain_sessionid
), pv AS (
    SELECT session_id, anonymous, page_url, page_urlpath, page_referrer, refr_urlhost,
           mkt_source, mkt_medium, mkt_campaign, mkt_term, mkt_content,
           COUNT(*) OVER w AS page_views, SUM(engaged_time_in_s) OVER w AS engaged_time_in_s,
           ROW_NUMBER() OVER (PARTITION BY session_id, anonymous
                              ORDER BY start_tstamp, event_id, dvce_created_tstamp) AS n
    FROM page_views WHERE session_id IS NOT NULL
    WINDOW w AS (PARTITION BY session_id, anonymous)
)
SELECT b.session_id, b.device_id, b.user_id, b.session_index, b.started_at, b.ended_at, b.event_count,
       b.anonymous, p.page_url AS first_page_url, p.page_urlpath AS first_page_urlpath,
       p.page_referrer AS referrer, p.refr_urlhost, p.mkt_source, p.mkt_medium, p.mkt_campaign,
       p.mkt_term, p.mkt_content, COALESCE(p.page_views, 0) AS page_views,
       COALESCE(p.engaged_time_in_s, 0) AS engaged_time_in_s,
       CASE WHEN p.page_views >= 2 OR p.engaged_time_in_s >= 20 THEN 1 ELSE 0 END AS is_engaged
FROM base b LEFT JOIN pv p ON p.session_id = b.session_id AND p.anonymous = b.anonymous AND p.n = 1;
