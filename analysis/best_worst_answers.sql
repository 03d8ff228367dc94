-- The best and the worst answer to each query, by external reward R.
SELECT iteration, query_id,
       any_value(query_text)         AS query_text,
       max(reward)                   AS best_reward,
       arg_max(answer_index, reward) AS best_answer_index,
       arg_max(answer_text, reward)  AS best_answer,
       min(reward)                   AS worst_reward,
       arg_min(answer_index, reward) AS worst_answer_index,
       arg_min(answer_text, reward)  AS worst_answer
FROM records
GROUP BY iteration, query_id
ORDER BY iteration, query_id;
