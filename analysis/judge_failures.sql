-- The judge's parse-failure rate per iteration: replies with no usable <Score>
-- (`missing`) or one outside 0..7 (`out_of_range`) got the fallback R_Q.
SELECT iteration,
       count(*) FILTER (WHERE self_reward_status <> 'disabled') AS judged,
       count(*) FILTER (WHERE self_reward_status IN ('missing', 'out_of_range')) AS failures,
       failures / nullif(judged, 0) AS failure_rate
FROM records
GROUP BY iteration
ORDER BY iteration;
