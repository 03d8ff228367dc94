-- How the judge's R_Q was obtained per iteration: read out of its score distribution
-- (`read_out`, a reply without a usable <Score>), or the fallback R_Q when read-out is
-- off (`missing`: no usable <Score>, `out_of_range`: one outside 0..7).
SELECT iteration,
       count(*) FILTER (WHERE self_reward_status <> 'disabled') AS judged,
       count(*) FILTER (WHERE self_reward_status = 'read_out') AS read_outs,
       count(*) FILTER (WHERE self_reward_status IN ('missing', 'out_of_range')) AS failures,
       read_outs / nullif(judged, 0) AS read_out_rate,
       failures / nullif(judged, 0) AS failure_rate
FROM records
GROUP BY iteration
ORDER BY iteration;
