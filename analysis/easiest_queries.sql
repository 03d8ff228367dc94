-- The ten easiest queries of the run: highest value V(q).
SELECT iteration, query_id, any_value(value) AS value, any_value(query_text) AS query_text
FROM records
GROUP BY iteration, query_id
ORDER BY value DESC, iteration, query_id
LIMIT 10;
