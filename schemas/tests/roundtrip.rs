//! Batches survive rows → Arrow → Parquet → Arrow → rows unchanged, wrappers refuse
//! batches of another boundary, and the game record is assembled column by column.

use arrow::array::RecordBatch;
use lsp_schemas::*;

mod common;

use common::{query, record, step, updated_rows};

#[test]
fn every_boundary_round_trips_through_rows() {
    let rows = updated_rows();
    let batch = UpdatedBatch::from_rows(&rows).unwrap();
    assert_eq!(batch.num_rows(), 6);
    assert_eq!(batch.to_rows().unwrap(), rows);

    let queries: Vec<_> = (0..4).map(query).collect();
    assert_eq!(
        QueryBatch::from_rows(&queries).unwrap().to_rows().unwrap(),
        queries
    );
    let steps = vec![step()];
    assert_eq!(
        StepBatch::from_rows(&steps).unwrap().to_rows().unwrap(),
        steps
    );
}

#[test]
fn a_batch_of_another_boundary_is_refused() {
    let queries = QueryBatch::from_rows(&[query(0)]).unwrap();
    let err = AnswerBatch::try_new(RecordBatch::from(queries)).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with("AnswerBatch: has 11 columns"),
        "{message}"
    );

    // Same width, one column of the wrong type.
    let schema = query_schema();
    let mut fields: Vec<_> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields[1] = arrow::datatypes::Field::new("query_id", arrow::datatypes::DataType::Int64, false);
    let bad = std::sync::Arc::new(arrow::datatypes::Schema::new(fields));
    let err = check_schema("QueryBatch", &schema, &bad).unwrap_err();
    assert_eq!(
        err.to_string(),
        "QueryBatch: column 1 is `query_id: Int64`, expected `query_id: UInt32`"
    );
}

#[test]
fn game_record_is_assembled_from_the_update_and_the_step() {
    let updated = UpdatedBatch::from_rows(&updated_rows()).unwrap();
    let seconds = StageSeconds {
        challenger: 1.0,
        solver: 2.0,
        reward: 3.0,
        self_reward: 4.0,
        advantage: 0.5,
        update: 6.0,
    };
    let record = GameRecordBatch::assemble("run-a", "lsp", &updated, &step(), &seconds).unwrap();
    let rows = record.to_rows().unwrap();
    assert_eq!(rows.len(), 6);
    let r = &rows[5];
    assert_eq!((r.iteration, r.query_id, r.answer_index), (3, 1, 2));
    assert_eq!((r.run_id.as_str(), r.mode.as_str()), ("run-a", "lsp"));
    assert_eq!((r.query_tokens, r.answer_tokens), (4, 3));
    assert_eq!(r.reference_answer.as_deref(), Some("42"));
    assert_eq!(rows[1].self_reward, None);
    assert_eq!(rows[1].self_reward_status, "missing");
    assert_eq!(r.skip_reason.as_deref(), Some("non-finite gradient"));
    assert!(!r.step_applied);
    assert_eq!((r.seconds_self_reward, r.seconds_advantage), (4.0, 0.5));
    assert_eq!(r.kl_answer, 0.25);
    // The monitor's columns are null until it fills them.
    assert_eq!((r.query_similarity, r.answer_is_code), (None, None));
    let monitor: Vec<RowMonitor> = (0..6)
        .map(|i| RowMonitor {
            query_similarity: i as f64 / 10.0,
            query_similar_to: (i == 5).then_some((2, 7)),
            query_asks_code: i == 1,
            answer_code_fraction: 0.75,
            answer_is_code: i % 2 == 0,
        })
        .collect();
    let filled = record.with_monitor(&monitor).unwrap().to_rows().unwrap();
    assert_eq!(filled[5].query_similarity, Some(0.5));
    assert_eq!(
        (
            filled[5].query_similar_iteration,
            filled[5].query_similar_id
        ),
        (Some(2), Some(7))
    );
    assert_eq!(filled[4].query_similar_iteration, None);
    assert_eq!(
        (filled[4].answer_code_fraction, filled[4].answer_is_code),
        (Some(0.75), Some(true))
    );
    assert_eq!(
        (filled[1].query_asks_code, filled[2].query_asks_code),
        (Some(true), Some(false))
    );
    assert_eq!(filled[5].reward, rows[5].reward);
    assert!(record.with_monitor(&monitor[..5]).is_err());

    let mut wrong = step();
    wrong.iteration = 4;
    let err = GameRecordBatch::assemble("run-a", "lsp", &updated, &wrong, &seconds).unwrap_err();
    assert!(
        err.to_string()
            .contains("iteration 3 assembled with the step of iteration 4")
    );
}

#[test]
fn parquet_round_trip_is_exact_and_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records/iteration-000003.parquet");
    let record = record();
    write_parquet(&path, std::slice::from_ref(&record)).unwrap();

    let back: Vec<GameRecordBatch> = read_parquet(&path).unwrap();
    let back_rows: Vec<_> = back.iter().flat_map(|b| b.to_rows().unwrap()).collect();
    assert_eq!(back_rows, record.to_rows().unwrap());
    // Only the final file is left: the temporary was renamed.
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["iteration-000003.parquet"]);

    // A typed read of a file of another schema is refused.
    let err = read_parquet::<QueryBatch>(&path).unwrap_err();
    assert!(
        err.to_string().starts_with("QueryBatch: has 60 columns"),
        "{err}"
    );
    // A file that is not Parquet names the file.
    let junk = dir.path().join("junk.parquet");
    std::fs::write(&junk, b"not parquet").unwrap();
    let err = read_batches(&junk).unwrap_err().to_string();
    assert!(err.contains("junk.parquet"), "{err}");
}
