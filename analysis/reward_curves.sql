-- Reward curves per role: the solver's R and R_Q per answer, the value V(q) and
-- V_Q(q) per query and the challenger's reward per query, by iteration.
WITH per_query AS (
    SELECT iteration, query_id,
           any_value(value) AS value,
           any_value(value_q) AS value_q,
           any_value(challenger_reward) AS challenger_reward
    FROM records GROUP BY iteration, query_id
)
SELECT r.iteration,
       avg(r.reward)          AS mean_reward,
       stddev_pop(r.reward)   AS sd_reward,
       avg(r.self_reward)     AS mean_self_reward,
       avg(r.solver_reward)   AS mean_solver_reward,
       any_value(q.mean_value)             AS mean_value,
       any_value(q.mean_value_q)           AS mean_value_q,
       any_value(q.mean_challenger_reward) AS mean_challenger_reward
FROM records r
JOIN (SELECT iteration,
             avg(value) AS mean_value,
             avg(value_q) AS mean_value_q,
             avg(challenger_reward) AS mean_challenger_reward
      FROM per_query GROUP BY iteration) q USING (iteration)
GROUP BY r.iteration
ORDER BY r.iteration;
