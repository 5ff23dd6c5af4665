//! Checks of request fields that need no state: shapes, lengths, ranges. The Scheduler runs
//! them before touching Redis, and the Gateway runs the same ones before forwarding, so a
//! bad request is refused at the public door with the same words and never reaches a
//! Scheduler. Errors are [`EngineError::Invalid`] naming the field as the API spells it.

use std::time::Duration;

use crate::{EngineError, ids, spec};

/// Default page size when a request leaves it 0.
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// Largest page of any list call.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Most items in one batch call (`StartRuns`, `ReportTaskResults`).
pub const MAX_BATCH: usize = 1000;

/// Longest a `PollTasks` call may wait.
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(60);

/// Longest a heartbeat may extend a lease by.
pub const MAX_LEASE_EXTENSION: Duration = Duration::from_secs(3600);

/// Longest a run start may be delayed.
pub const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 3600);

/// A page size: 0 means the default, else 1-1000.
pub fn page_size(n: u32) -> Result<usize, EngineError> {
    match n {
        0 => Ok(DEFAULT_PAGE_SIZE),
        1..=MAX_PAGE_SIZE => Ok(n as usize),
        _ => Err(EngineError::invalid("page_size", format!("must be 1-{MAX_PAGE_SIZE}"))),
    }
}

/// A non-empty field.
pub fn required(field: &str, value: &str) -> Result<(), EngineError> {
    if value.is_empty() { Err(EngineError::invalid(field, "is required")) } else { Ok(()) }
}

/// A workflow name: 1-128 of `[A-Za-z0-9_.-]`, starting with a letter or digit.
pub fn workflow_name(field: &str, name: &str) -> Result<(), EngineError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(EngineError::invalid(
            field,
            format!("{name:?} must be 1-128 characters of [A-Za-z0-9_.-], starting with a letter or digit"),
        ))
    }
}

/// A run id AURA could have issued (`<ulid>-<partition>`); which partitions exist is only
/// known to the Scheduler.
pub fn run_id(field: &str, id: &str) -> Result<(), EngineError> {
    required(field, id)?;
    if ids::partition_of_run(id, usize::MAX).is_none() {
        return Err(EngineError::invalid(field, format!("{id:?} is not an AURA run id")));
    }
    Ok(())
}

/// A queue name (the queue's own rule).
pub fn queue_name(field: &str, queue: &str) -> Result<(), EngineError> {
    aura_queue::validate_name("queue", queue)
        .map_err(|e| EngineError::invalid(field, e.to_string().replace("invalid queue: ", "")))
}

/// The options of a run start: priority, keys, delay.
pub fn start_options(
    priority: i32,
    idempotency_key: &str,
    concurrency_key: &str,
    delay: Duration,
) -> Result<(), EngineError> {
    if !(0..=i32::from(aura_queue::MAX_PRIORITY)).contains(&priority) {
        return Err(EngineError::invalid("priority", format!("must be 0..={}", aura_queue::MAX_PRIORITY)));
    }
    if idempotency_key.len() > 256 {
        return Err(EngineError::invalid("idempotency_key", "must be at most 256 characters"));
    }
    if concurrency_key.len() > 128 || concurrency_key.chars().any(char::is_control) {
        return Err(EngineError::invalid("concurrency_key", "must be at most 128 printable characters"));
    }
    if delay > MAX_DELAY {
        return Err(EngineError::invalid("delay", "must be at most a year"));
    }
    Ok(())
}

/// A batch of at most [`MAX_BATCH`] items.
pub fn batch(field: &str, len: usize) -> Result<(), EngineError> {
    if len > MAX_BATCH {
        return Err(EngineError::invalid(field, format!("{len} given; at most {MAX_BATCH} per call")));
    }
    Ok(())
}

/// A poll's wait.
pub fn poll_wait(wait: Duration) -> Result<(), EngineError> {
    if wait > MAX_POLL_WAIT {
        return Err(EngineError::invalid("wait", "must be at most 60 s"));
    }
    Ok(())
}

/// What a poll asks for: at least one well-named queue, 1-1000 tasks.
pub fn poll(queues: &[String], max_tasks: usize) -> Result<(), EngineError> {
    if queues.is_empty() {
        return Err(EngineError::invalid(
            "queues",
            "name at least one queue (built-in steps are on \"builtin\")",
        ));
    }
    for (i, q) in queues.iter().enumerate() {
        queue_name(&format!("queues[{i}]"), q)?;
    }
    if max_tasks == 0 || max_tasks > crate::tasks::MAX_TASKS_PER_POLL {
        return Err(EngineError::invalid(
            "max_tasks",
            format!("must be 1..={}", crate::tasks::MAX_TASKS_PER_POLL),
        ));
    }
    Ok(())
}

/// A heartbeat's lease extension.
pub fn lease_extension(extend: Duration) -> Result<(), EngineError> {
    if extend.is_zero() || extend > MAX_LEASE_EXTENSION {
        return Err(EngineError::invalid("extend_by", "must be between 1 ms and 1 h"));
    }
    Ok(())
}

/// One reported result: ids present (the outcome is checked by the caller, which knows the
/// message's shape).
pub fn task_result(i: usize, task_id: &str, lease_token: &str) -> Result<(), EngineError> {
    if task_id.is_empty() || lease_token.is_empty() {
        return Err(EngineError::invalid(format!("results[{i}]"), "task_id and lease_token are required"));
    }
    Ok(())
}

/// A dead-letter retry names one task or all of them.
pub fn retry_target(task_id: &str, all: bool) -> Result<(), EngineError> {
    match (task_id.is_empty(), all) {
        (true, false) => Err(EngineError::invalid("task_id", "name a dead letter, or set all")),
        (false, true) => Err(EngineError::invalid("all", "set either task_id or all, not both")),
        _ => Ok(()),
    }
}

/// A dead-letter page token: `<partition>:<offset>` as handed out.
pub fn dead_letter_cursor(token: &str) -> Result<(usize, usize), EngineError> {
    if token.is_empty() {
        return Ok((0, 0));
    }
    let bad = || EngineError::invalid("page_token", "malformed; pass next_page_token unchanged");
    let (p, o) = token.split_once(':').ok_or_else(bad)?;
    Ok((p.parse().map_err(|_| bad())?, o.parse().map_err(|_| bad())?))
}

/// What a spec must have before its steps are looked at closely: a valid name, a sane
/// description, 1-[`spec::MAX_STEPS`] steps with well-formed ids and known kinds.
pub fn spec_outline<'a>(
    name: &str,
    description: &str,
    steps: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
) -> Result<(), EngineError> {
    workflow_name("spec.name", name)?;
    if description.len() > 4096 {
        return Err(EngineError::invalid("spec.description", "must be at most 4096 bytes"));
    }
    if steps.len() == 0 {
        return Err(EngineError::invalid("spec.steps", "a workflow needs at least one step"));
    }
    if steps.len() > spec::MAX_STEPS {
        return Err(EngineError::invalid(
            "spec.steps",
            format!("{} steps; the limit is {}", steps.len(), spec::MAX_STEPS),
        ));
    }
    for (i, (id, kind)) in steps.enumerate() {
        step_id(&format!("spec.steps[{i}].id"), id)?;
        if !spec::KINDS.contains(&kind) {
            return Err(EngineError::invalid(
                format!("spec.steps[{i}].kind"),
                format!("unknown kind {kind:?}; expected one of {}", spec::KINDS.join(", ")),
            ));
        }
    }
    Ok(())
}

/// A step id: 1-64 of `[A-Za-z0-9_-]`.
pub fn step_id(field: &str, id: &str) -> Result<(), EngineError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(EngineError::invalid(field, format!("{id:?} must be 1-64 characters of [A-Za-z0-9_-]")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(r: Result<impl std::fmt::Debug, EngineError>) -> String {
        match r {
            Err(EngineError::Invalid { field, .. }) => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn checks_name_the_field() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(field(page_size(1001)), "page_size");
        assert_eq!(field(run_id("run_id", "nope")), "run_id");
        run_id("run_id", &ids::run_id(7)).unwrap();
        assert_eq!(field(workflow_name("name", "-x")), "name");
        assert_eq!(field(poll(&["ok".into(), "a b".into()], 1)), "queues[1]");
        assert_eq!(field(poll(&["ok".into()], 0)), "max_tasks");
        assert_eq!(field(start_options(1001, "", "", Duration::ZERO)), "priority");
        assert_eq!(field(dead_letter_cursor("x")), "page_token");
        assert_eq!(dead_letter_cursor("2:5").unwrap(), (2, 5));
        assert_eq!(field(spec_outline("ok", "", [("a", "nope")].into_iter())), "spec.steps[0].kind");
        assert_eq!(field(spec_outline("ok", "", std::iter::empty::<(&str, &str)>())), "spec.steps");
    }
}
