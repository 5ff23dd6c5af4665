//! Tenant isolation, enforced at the public door. With authentication on, every name a
//! tenant gives (workflows, external queues, topics) is stored as `<tenant>.<name>`, and
//! every answer is filtered and translated back: a tenant sees only its own objects, and
//! another tenant's are NOT_FOUND, as if they did not exist. The services behind the
//! Gateway are internal and see the namespaced names. With `--insecure-no-auth` there is no
//! tenant and names pass through unchanged.
//!
//! Run ids are not namespaced: a run belongs to the tenant of its workflow, which is checked
//! on every call that names a run.

use aura_common::status;
use aura_proto::v1 as pb;
use tonic::{Request, Status};

use crate::auth::Tenant;

/// The tenant a call acts for (`None` when authentication is off).
#[derive(Clone, Debug)]
pub struct Scope(Option<String>);

impl Scope {
    /// The scope of a request (set by the auth layer).
    pub fn of<T>(req: &Request<T>) -> Scope {
        Scope(req.extensions().get::<Tenant>().map(|t| t.0.clone()))
    }

    /// The tenant (used as the default fair-dispatch key).
    pub fn tenant(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// A user-visible name → the stored name.
    pub fn name_in(&self, name: &str) -> String {
        match &self.0 {
            Some(t) if !name.is_empty() => format!("{t}.{name}"),
            _ => name.to_string(),
        }
    }

    /// A stored name → the user-visible one, or `None` when it is another tenant's.
    pub fn name_out(&self, stored: &str) -> Option<String> {
        match &self.0 {
            None => Some(stored.to_string()),
            Some(t) => {
                stored.strip_prefix(t.as_str()).and_then(|rest| rest.strip_prefix('.')).map(str::to_string)
            }
        }
    }

    /// Rewrites a stored name in place; false when it is another tenant's.
    fn out(&self, name: &mut String) -> bool {
        match self.name_out(name) {
            Some(visible) => {
                *name = visible;
                true
            }
            None => false,
        }
    }

    /// A queue a tenant names. The built-in queue is AURA's own.
    pub fn queue_in(&self, field: &str, queue: &str) -> Result<String, Status> {
        if self.0.is_some() && queue == "builtin" {
            return Err(Status::permission_denied(format!(
                "{field}: the builtin queue is served by AURA's own workers; tenants use their external queues"
            )));
        }
        Ok(self.name_in(queue))
    }

    /// Namespaces a spec: its name and its external steps' queues.
    pub fn spec_in(&self, spec: &mut pb::WorkflowSpec) {
        if self.0.is_none() {
            return;
        }
        if !spec.name.is_empty() {
            spec.name = self.name_in(&spec.name);
        }
        for step in &mut spec.steps {
            if step.kind != "external" {
                continue;
            }
            if let Some(config) = &mut step.config
                && let Some(queue) = config.fields.get_mut("queue")
                && let Some(prost_types::value::Kind::StringValue(q)) = &mut queue.kind
                && !q.is_empty()
            {
                *q = self.name_in(q);
            }
        }
    }

    /// The inverse of [`Scope::spec_in`]; false when the spec is another tenant's.
    pub fn spec_out(&self, spec: &mut pb::WorkflowSpec) -> bool {
        if self.0.is_none() {
            return true;
        }
        if !self.out(&mut spec.name) {
            return false;
        }
        for step in &mut spec.steps {
            if let Some(config) = &mut step.config
                && step.kind == "external"
                && let Some(queue) = config.fields.get_mut("queue")
                && let Some(prost_types::value::Kind::StringValue(q)) = &mut queue.kind
            {
                self.out(q);
            }
        }
        true
    }

    /// Translates a workflow; false when it is another tenant's.
    pub fn workflow_out(&self, wf: &mut pb::Workflow) -> bool {
        wf.spec.as_mut().is_none_or(|s| self.spec_out(s))
    }

    /// Translates a run; false when it is another tenant's.
    pub fn run_out(&self, run: &mut pb::Run) -> bool {
        self.out(&mut run.workflow_name)
    }

    /// Translates a task handed to an external worker.
    pub fn task_out(&self, task: &mut pb::Task) {
        self.out(&mut task.workflow_name);
        self.out(&mut task.queue);
    }

    /// Translates a schedule; false when it is another tenant's.
    pub fn schedule_out(&self, s: &mut pb::Schedule) -> bool {
        self.out(&mut s.workflow_name)
    }

    /// Queue counters under the tenant's name for the queue.
    pub fn stats_out(&self, stats: &mut pb::QueueStats) {
        self.out(&mut stats.queue);
    }

    /// A subscription pattern a tenant gives → the stored topic pattern. Tenants may follow
    /// their workflows (`workflows.<name>`, wildcards allowed) and their runs
    /// (`runs.<run_id>`, checked by the caller). Returns the run id to check, if any.
    pub fn pattern_in(&self, i: usize, pattern: &str) -> Result<(String, Option<String>), Status> {
        let Some(tenant) = &self.0 else { return Ok((pattern.to_string(), None)) };
        let field = format!("patterns[{i}]");
        if let Some(rest) = pattern.strip_prefix("workflows.") {
            return Ok((format!("workflows.{tenant}.{rest}"), None));
        }
        if let Some(run) = pattern.strip_prefix("runs.")
            && !run.is_empty()
            && !run.contains(['*', '>', '.'])
        {
            return Ok((pattern.to_string(), Some(run.to_string())));
        }
        Err(status::invalid_field(
            field,
            format!(
                "{pattern:?}: tenants subscribe to workflows.<name> (wildcards allowed) or runs.<run_id> of their runs"
            ),
        ))
    }

    /// Translates an event for the tenant (topic and the payload's `workflow`).
    pub fn event_out(&self, event: &mut pb::Event) {
        let Some(tenant) = &self.0 else { return };
        if let Some(rest) = event.topic.strip_prefix(&format!("workflows.{tenant}.")) {
            event.topic = format!("workflows.{rest}");
        }
        if let Some(payload) = &mut event.payload
            && let Some(workflow) = payload.fields.get_mut("workflow")
            && let Some(prost_types::value::Kind::StringValue(w)) = &mut workflow.kind
        {
            self.out(w);
        }
    }
}

/// NOT_FOUND for another tenant's run, worded as if it did not exist.
pub fn run_not_found(run_id: &str) -> Status {
    Status::not_found(format!("run {run_id:?} not found"))
}
