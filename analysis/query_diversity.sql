-- Query length and diversity over time: mean query length, distinct query texts, and
-- the live monitor's distinct-n, novelty against earlier iterations and near-duplicates.
WITH q AS (
    SELECT iteration, query_id, any_value(query_text) AS query_text, any_value(query_tokens) AS query_tokens
    FROM records GROUP BY iteration, query_id
)
SELECT q.iteration,
       count(*)                         AS queries,
       avg(q.query_tokens)              AS mean_query_tokens,
       avg(length(q.query_text))        AS mean_query_chars,
       count(DISTINCT q.query_text)     AS distinct_texts,
       any_value(m.distinct_n)          AS distinct_n,
       any_value(m.novelty)             AS novelty,
       any_value(m.near_duplicates)     AS near_duplicates
FROM q JOIN monitor m USING (iteration)
GROUP BY q.iteration
ORDER BY q.iteration;
