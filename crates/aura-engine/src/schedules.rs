//! Schedules: start a run of a workflow on a cron expression. Every scheduler replica runs
//! the ticker; a tick is claimed with a compare-and-set script (see
//! `lua/advance_schedule.lua`) and the run it starts carries the idempotency key
//! `schedule:<id>:<tick>`, so each tick starts exactly one run. Ticks missed while no
//! scheduler ran are skipped, not replayed; only the most recent one fires.

use std::{sync::LazyLock, time::Duration};

use chrono::{DateTime, TimeZone, Utc};
use croner::{
    Cron,
    parser::{CronParser, Seconds, Year},
};
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use tokio_util::sync::CancellationToken;

use crate::{Engine, EngineError, runs::StartRequest};

static ADVANCE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/advance_schedule.lua")));

/// A schedule as stored and returned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Server-assigned id.
    pub schedule_id: String,
    /// Workflow to run.
    pub workflow_name: String,
    /// Version (0: latest at each tick).
    pub workflow_version: u32,
    /// Cron expression, UTC: 5 fields, or 6 with leading seconds.
    pub cron: String,
    /// Input of every run.
    pub input: Map<String, Json>,
    /// Creation time, ms.
    pub created_at_ms: u64,
}

/// Parses a cron expression: standard 5 fields (minute hour day month weekday) or 6 with a
/// leading seconds field; no year field.
pub fn parse_cron(expr: &str) -> Result<Cron, EngineError> {
    let fields = expr.split_whitespace().count();
    if !(5..=6).contains(&fields) {
        return Err(EngineError::invalid(
            "cron",
            format!("{expr:?} has {fields} fields; expected 5 (or 6 with seconds)"),
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| EngineError::invalid("cron", format!("{expr:?} is not a valid cron expression: {e}")))
}

/// The first tick strictly after `after_ms`.
pub fn next_tick(cron: &Cron, after_ms: u64) -> Result<u64, EngineError> {
    let after: DateTime<Utc> = Utc
        .timestamp_millis_opt(after_ms as i64)
        .single()
        .ok_or_else(|| EngineError::invalid("cron", "time out of range"))?;
    let next = cron
        .find_next_occurrence(&after, false)
        .map_err(|e| EngineError::invalid("cron", format!("has no next occurrence: {e}")))?;
    Ok(next.timestamp_millis() as u64)
}

impl Engine {
    fn schedule_keys(&self) -> (String, String) {
        let p = &self.config.prefix;
        (format!("{p}:{{sch}}:defs"), format!("{p}:{{sch}}:due"))
    }

    /// Creates a schedule after checking the cron expression and the workflow.
    pub async fn create_schedule(
        &self,
        workflow_name: &str,
        workflow_version: u32,
        cron: &str,
        input: Map<String, Json>,
    ) -> Result<(Schedule, u64), EngineError> {
        if workflow_name.is_empty() {
            return Err(EngineError::invalid("workflow_name", "is required"));
        }
        let parsed = parse_cron(cron)?;
        self.registry.get(workflow_name, workflow_version).await?;
        let now = aura_queue::now_ms();
        let next = next_tick(&parsed, now)?;
        let schedule = Schedule {
            schedule_id: crate::ids::ulid(),
            workflow_name: workflow_name.to_string(),
            workflow_version,
            cron: cron.to_string(),
            input,
            created_at_ms: now,
        };
        let (defs, due) = self.schedule_keys();
        let json = serde_json::to_string(&schedule).map_err(|e| EngineError::Corrupt(e.to_string()))?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(&defs, &schedule.schedule_id, json)
            .ignore()
            .zadd(&due, &schedule.schedule_id, next)
            .ignore();
        let mut conn = self.queue.conn();
        let () = pipe.query_async(&mut conn).await?;
        Ok((schedule, next))
    }

    /// Every schedule with its next fire time, ordered by id.
    pub async fn list_schedules(&self) -> Result<Vec<(Schedule, u64)>, EngineError> {
        let (defs, due) = self.schedule_keys();
        let mut conn = self.queue.conn();
        let all: std::collections::BTreeMap<String, String> = conn.hgetall(&defs).await?;
        let mut out = Vec::with_capacity(all.len());
        for (id, json) in all {
            let schedule: Schedule =
                serde_json::from_str(&json).map_err(|e| EngineError::Corrupt(e.to_string()))?;
            let next: Option<f64> = conn.zscore(&due, &id).await?;
            out.push((schedule, next.unwrap_or(0.0) as u64));
        }
        Ok(out)
    }

    /// Deletes a schedule.
    pub async fn delete_schedule(&self, schedule_id: &str) -> Result<(), EngineError> {
        let (defs, due) = self.schedule_keys();
        let mut pipe = redis::pipe();
        pipe.atomic().hdel(&defs, schedule_id).zrem(&due, schedule_id);
        let mut conn = self.queue.conn();
        let (removed, _): (u32, u32) = pipe.query_async(&mut conn).await?;
        if removed == 0 {
            return Err(EngineError::NotFound(format!("schedule {schedule_id:?} not found")));
        }
        Ok(())
    }

    /// Fires due schedules until `shutdown`, checking every `every`.
    pub async fn run_schedules(&self, every: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(err) = self.fire_due_schedules().await {
                tracing::debug!(%err, "schedule pass failed");
            }
        }
    }

    /// One pass: claims and fires every due tick. Returns the runs started.
    pub async fn fire_due_schedules(&self) -> Result<Vec<String>, EngineError> {
        let (defs, due) = self.schedule_keys();
        let now = aura_queue::now_ms();
        let mut conn = self.queue.conn();
        let due_now: Vec<(String, f64)> =
            conn.zrangebyscore_limit_withscores(&due, "-inf", now as f64, 0, 100).await?;
        let mut started = Vec::new();
        for (id, tick) in due_now {
            let tick = tick as u64;
            let Some(json): Option<String> = conn.hget(&defs, &id).await? else { continue };
            let schedule: Schedule =
                serde_json::from_str(&json).map_err(|e| EngineError::Corrupt(e.to_string()))?;
            let Ok(cron) = parse_cron(&schedule.cron) else { continue };
            let next = next_tick(&cron, now.max(tick))?;
            let owned: i64 = ADVANCE.key(&due).arg(&id).arg(tick).arg(next).invoke_async(&mut conn).await?;
            if owned != 1 {
                continue;
            }
            let req = StartRequest {
                workflow_name: schedule.workflow_name.clone(),
                workflow_version: schedule.workflow_version,
                input: schedule.input.clone(),
                idempotency_key: format!("schedule:{id}:{tick}"),
                ..Default::default()
            };
            match self.start_run(req).await {
                Ok(run) => {
                    tracing::info!(schedule_id = %id, tick, run_id = %run.run_id, "schedule fired");
                    started.push(run.run_id);
                }
                Err(err) => tracing::warn!(schedule_id = %id, %err, "scheduled run could not start"),
            }
        }
        Ok(started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_expressions_parse_or_name_the_problem() {
        let every_minute = parse_cron("* * * * *").unwrap();
        assert_eq!(next_tick(&every_minute, 0).unwrap(), 60_000);
        let every_second = parse_cron("* * * * * *").unwrap();
        assert_eq!(next_tick(&every_second, 1_500).unwrap(), 2_000);
        assert!(parse_cron("61 * * * *").unwrap_err().to_string().contains("cron"));
        assert!(parse_cron("* * *").unwrap_err().to_string().contains("expected 5"));
    }
}
