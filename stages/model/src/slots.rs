//! The prompts' `{name}` slots (the paper's Boxes 1 and 3, the judges' prompts).
//!
//! The boxes are kept verbatim, and they hold literal braces of their own (`{}`,
//! `{ice cream flavor}`), so they are not Jinja templates: a slot is a `{name}` that
//! the caller names, anything else stays as written. Slots are filled in one pass, so
//! a value that itself contains a slot's name (a query quoting `{response}`) is kept
//! as written.

/// `template` with each `{name}` of `slots` (`(name, value)`) replaced by its value,
/// in one pass.
pub fn fill_slots(template: &str, slots: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let slot = slots.iter().find(|(name, _)| {
            tail[1..].starts_with(name) && tail[1 + name.len()..].starts_with('}')
        });
        let (value, taken) = match slot {
            Some((name, value)) => (*value, name.len() + 2),
            None => ("{", 1),
        };
        out.push_str(value);
        rest = &tail[taken..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_slots_are_filled_once_and_other_braces_kept() {
        let filled = fill_slots(
            "{a} and {b}, {a} again; {} {c} {a",
            &[("a", "x{b}"), ("b", "{a}")],
        );
        assert_eq!(filled, "x{b} and {a}, x{b} again; {} {c} {a");
        assert_eq!(fill_slots("", &[("a", "x")]), "");
        assert_eq!(fill_slots("no slots", &[]), "no slots");
    }
}
