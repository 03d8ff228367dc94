-- The ten hardest queries of the run: lowest value V(q) (mean reward of their answers).
SELECT iteration, query_id, any_value(value) AS value, any_value(query_text) AS query_text
FROM records
GROUP BY iteration, query_id
ORDER BY value ASC, iteration, query_id
LIMIT 10;
