//! Reading the judge's reply: the `<Score>k</Score>` it concludes with, checked against
//! its `<Calculation>`.

/// How a reply was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseStatus {
    /// A score in 0..=7 that its calculation (if any) adds up to.
    Ok,
    /// A score in range, but the calculation's terms, its total and the score disagree.
    /// The score is used; the row is flagged.
    CalculationMismatch,
    /// No `<Score>` with a whole number: the fallback applies.
    Missing,
    /// A score outside 0..=7: the fallback applies.
    OutOfRange,
}

impl ParseStatus {
    /// The name in the `self_reward_status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::CalculationMismatch => "calculation_mismatch",
            Self::Missing => "missing",
            Self::OutOfRange => "out_of_range",
        }
    }

    /// Whether the reply's score is used (else the fallback is).
    pub fn has_score(self) -> bool {
        matches!(self, Self::Ok | Self::CalculationMismatch)
    }
}

/// Where an answer's R_Q came from, from its `self_reward_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreSource {
    /// The number the judge's reply wrote (`ok`, `calculation_mismatch`).
    Parsed,
    /// The expected score of the judge's distribution after `<Score>` (`read_out`).
    ReadOut,
    /// The configured fallback (`missing`, `out_of_range`).
    Fallback,
}

/// The status of an R_Q read out of the judge's score distribution.
pub const READ_OUT: &str = "read_out";

impl ScoreSource {
    /// The source a status names; `None` for `disabled` (no self-reward).
    pub fn of_status(status: &str) -> Option<Self> {
        match status {
            "disabled" => None,
            "ok" | "calculation_mismatch" => Some(Self::Parsed),
            READ_OUT => Some(Self::ReadOut),
            _ => Some(Self::Fallback),
        }
    }
}

/// The text between the last `<tag>` and its `</tag>`.
fn last_tagged<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = text.rfind(&open)? + open.len();
    let end = text[start..].find(&close)? + start;
    Some(text[start..end].trim())
}

/// `Some(total)` when `a+b+...=t` adds up to `t`, `None` when it does not parse.
fn calculation(text: &str) -> Option<(i64, i64)> {
    let (terms, total) = text.rsplit_once('=')?;
    let sum = terms
        .split('+')
        .map(|t| t.trim().parse::<i64>().ok())
        .sum::<Option<i64>>()?;
    Some((sum, total.trim().parse().ok()?))
}

/// The score of a reply (0..=7) and how it was read.
pub fn parse_judgement(reply: &str) -> (Option<i64>, ParseStatus) {
    let Some(score) = last_tagged(reply, "Score").and_then(|s| s.parse::<i64>().ok()) else {
        return (None, ParseStatus::Missing);
    };
    if !(0..=7).contains(&score) {
        return (Some(score), ParseStatus::OutOfRange);
    }
    let consistent = match last_tagged(reply, "Calculation").map(calculation) {
        None => true,
        Some(Some((sum, total))) => sum == total && total == score,
        Some(None) => false,
    };
    let status = if consistent {
        ParseStatus::Ok
    } else {
        ParseStatus::CalculationMismatch
    };
    (Some(score), status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_and_checked() {
        let ok = "Clear task.\n<Calculation>1+1+1+0+1+1+0=5</Calculation>\n<Score>5</Score>";
        assert_eq!(parse_judgement(ok), (Some(5), ParseStatus::Ok));
        // Without a calculation the score stands.
        assert_eq!(
            parse_judgement("<Score> 3 </Score>"),
            (Some(3), ParseStatus::Ok)
        );
        // Terms that do not add up, or a total that is not the score.
        let bad_sum = "<Calculation>1+1+1=4</Calculation><Score>4</Score>";
        assert_eq!(
            parse_judgement(bad_sum),
            (Some(4), ParseStatus::CalculationMismatch)
        );
        let other_total = "<Calculation>1+1=2</Calculation><Score>3</Score>";
        assert_eq!(
            parse_judgement(other_total),
            (Some(3), ParseStatus::CalculationMismatch)
        );
        let garbled = "<Calculation>one plus one</Calculation><Score>2</Score>";
        assert_eq!(
            parse_judgement(garbled),
            (Some(2), ParseStatus::CalculationMismatch)
        );
        // The last score counts (the prompt's own example may be echoed first).
        let echoed = "e.g. <Score>4</Score> ... <Calculation>0+0=0</Calculation><Score>0</Score>";
        assert_eq!(parse_judgement(echoed), (Some(0), ParseStatus::Ok));
        assert_eq!(
            parse_judgement("<Score>9</Score>"),
            (Some(9), ParseStatus::OutOfRange)
        );
        assert_eq!(
            parse_judgement("<Score>-1</Score>"),
            (Some(-1), ParseStatus::OutOfRange)
        );
        assert_eq!(
            parse_judgement("I rate it five."),
            (None, ParseStatus::Missing)
        );
        assert_eq!(
            parse_judgement("<Score>five</Score>"),
            (None, ParseStatus::Missing)
        );
        assert_eq!(parse_judgement("<Score>5"), (None, ParseStatus::Missing));
        assert!(ParseStatus::CalculationMismatch.has_score() && !ParseStatus::Missing.has_score());
    }

    #[test]
    fn every_status_names_its_source() {
        for (status, source) in [
            (ParseStatus::Ok, ScoreSource::Parsed),
            (ParseStatus::CalculationMismatch, ScoreSource::Parsed),
            (ParseStatus::Missing, ScoreSource::Fallback),
            (ParseStatus::OutOfRange, ScoreSource::Fallback),
        ] {
            assert_eq!(ScoreSource::of_status(status.as_str()), Some(source));
        }
        assert_eq!(ScoreSource::of_status(READ_OUT), Some(ScoreSource::ReadOut));
        assert_eq!(ScoreSource::of_status("disabled"), None);
    }
}
