-- Answers that drift into code for queries that do not ask for code (the LSP-Zero
-- failure of the paper's Box 2), per iteration; the rows themselves are
-- `SELECT * FROM records WHERE answer_is_code AND NOT query_asks_code`.
SELECT iteration,
       count(*) FILTER (WHERE NOT query_asks_code) AS plain_answers,
       count(*) FILTER (WHERE NOT query_asks_code AND answer_is_code) AS code_answers,
       code_answers / nullif(plain_answers, 0) AS code_drift,
       avg(answer_code_fraction) AS mean_code_fraction
FROM records
GROUP BY iteration
ORDER BY iteration;
