-- KL to the reference per iteration (answers per answer, queries per query), with the
-- loss and gradient norm of the iteration's optimizer step.
SELECT iteration,
       avg(kl_answer) AS mean_kl_answer,
       avg(kl_query) FILTER (WHERE answer_index = 0) AS mean_kl_query,
       any_value(loss) AS loss,
       any_value(grad_norm) AS grad_norm
FROM records
GROUP BY iteration
ORDER BY iteration;
