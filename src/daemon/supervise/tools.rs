//! The MCP tools the agent calls: `request_approval`, `await_decision` and `notify`.
//!
//! None of them decides anything, and none takes an argument that names or changes another
//! request: `request_approval` and `notify` only create new records (with ids the daemon
//! draws), `await_decision` only reads one. Answers are plain text a model reads well: the
//! decision first, then who, when, and the reviewer's comment.

use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, ProgressNotificationParam, ProgressToken,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

use super::config::Limits;
use crate::queue::{Id, NewRequest, Queue, QueueError, Record, State, blocking};

/// How often a waiting call looks at its request again.
const POLL_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestApprovalArgs {
    /// One line saying what you want to do, e.g. "Push branch fix-login to origin".
    pub title: String,
    /// Everything the human needs to decide: what, why, the exact commands or diff, the risks.
    pub details: String,
    /// A short word for the kind of action (e.g. "push", "deploy", "delete", "purchase").
    #[serde(default)]
    pub kind: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AwaitDecisionArgs {
    /// The request id that request_approval returned.
    pub id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyArgs {
    /// What to tell the human.
    pub message: String,
}

struct Inner {
    queue: Queue,
    limits: Limits,
}

/// The tool server of one bottle's queue (cheap to clone: one per MCP request).
#[derive(Clone)]
pub struct Tools {
    inner: Arc<Inner>,
    tool_router: ToolRouter<Tools>,
}

impl Tools {
    pub fn new(queue: Queue, limits: Limits) -> Tools {
        Tools {
            inner: Arc::new(Inner { queue, limits }),
            tool_router: Tools::tool_router(),
        }
    }
}

#[tool_router]
impl Tools {
    #[tool(
        description = "Ask the human supervising you to approve an action before you take it: anything consequential or hard to undo (pushing, deploying, deleting data, spending money, contacting people). Waits for the answer for a few minutes. The answer starts with APPROVED, DENIED, EXPIRED or PENDING; only go ahead on APPROVED. On PENDING nobody has answered yet: call await_decision with the id it gives."
    )]
    async fn request_approval(
        &self,
        Parameters(args): Parameters<RequestApprovalArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let request = match NewRequest::new(&args.title, &args.details, args.kind.as_deref()) {
            Ok(r) => r,
            Err(e) => return Ok(refused(&e)),
        };
        let (queue, limits) = (self.inner.queue.clone(), self.inner.limits.queue());
        let submitted = blocking(move || queue.submit(request, limits, Utc::now())).await;
        match submitted {
            Ok(record) => Ok(self.wait(record, ctx).await),
            Err(e) => Ok(refused(&e)),
        }
    }

    #[tool(
        description = "Wait again for the human's answer to a request made with request_approval, by its id. Answers like request_approval: APPROVED, DENIED, EXPIRED, or PENDING (then call await_decision again)."
    )]
    async fn await_decision(
        &self,
        Parameters(args): Parameters<AwaitDecisionArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let id = match Id::parse(&args.id) {
            Ok(id) => id,
            Err(e) => return Ok(refused(&e)),
        };
        match self.read(&id).await {
            Ok(Some(r)) if r.state == State::Notice => {
                Ok(refused(&QueueError::Notice { id: r.id.clone() }))
            }
            Ok(Some(record)) => Ok(self.wait(record, ctx).await),
            Ok(None) => Ok(refused(&QueueError::Unknown {
                id,
                scope: "this bottle's queue".to_string(),
            })),
            Err(e) => Ok(refused(&e)),
        }
    }

    #[tool(
        description = "Tell the human supervising you something that needs no answer (progress, a finding, a heads-up). Does not wait."
    )]
    async fn notify(
        &self,
        Parameters(args): Parameters<NotifyArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let queue = self.inner.queue.clone();
        match blocking(move || queue.notify(&args.message, Utc::now())).await {
            Ok(r) => Ok(CallToolResult::success(vec![ContentBlock::text(format!(
                "DELIVERED: the human will see your notice ({}). Nobody will answer it; carry on.",
                r.id
            ))])),
            Err(e) => Ok(refused(&e)),
        }
    }
}

impl Tools {
    async fn read(&self, id: &Id) -> Result<Option<Record>, QueueError> {
        let (queue, id) = (self.inner.queue.clone(), id.clone());
        blocking(move || queue.get(&id, Utc::now())).await
    }

    /// Waits until `record` is decided or expired, or the wait bound passes, sending progress
    /// notifications when the client asked for them; the answer for the model.
    async fn wait(&self, mut record: Record, ctx: RequestContext<RoleServer>) -> CallToolResult {
        let limits = &self.inner.limits;
        let token = ctx.meta.get_progress_token();
        let started = tokio::time::Instant::now();
        let deadline = started + limits.wait();
        let mut next_progress = started;
        loop {
            if !record.is_pending() {
                return answer(&record);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return still_pending(&record, started.elapsed());
            }
            if let Some(token) = &token
                && now >= next_progress
            {
                progress(&ctx, token, &record, now - started, limits.wait()).await;
                next_progress = now + limits.progress_every();
            }
            tokio::select! {
                () = tokio::time::sleep(POLL_EVERY.min(deadline - now)) => {}
                // The client gave up on the call; the request stays pending.
                () = ctx.ct.cancelled() => return still_pending(&record, started.elapsed()),
            }
            match self.read(&record.id).await {
                Ok(Some(r)) => record = r,
                Ok(None) => {
                    return refused(&QueueError::Unknown {
                        id: record.id.clone(),
                        scope: "this bottle's queue (it was removed on the host)".to_string(),
                    });
                }
                Err(e) => return refused(&e),
            }
        }
    }
}

async fn progress(
    ctx: &RequestContext<RoleServer>,
    token: &ProgressToken,
    record: &Record,
    waited: Duration,
    bound: Duration,
) {
    let param = ProgressNotificationParam::new(token.clone(), waited.as_secs_f64())
        .with_total(bound.as_secs_f64())
        .with_message(format!(
            "request {} is waiting for a human (krbottle approve {} / krbottle deny {})",
            record.id, record.id, record.id
        ));
    // A client that cannot take the notification still gets the answer.
    if let Err(e) = ctx.peer.notify_progress(param).await {
        tracing::debug!("progress notification not sent: {e}");
    }
}

fn when(at: chrono::DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The answer for a decided or expired request.
fn answer(r: &Record) -> CallToolResult {
    let d = r.decision.as_ref();
    let by = d.map_or("", |d| d.by.as_str());
    let at = d.map(|d| when(d.at)).unwrap_or_default();
    let comment = match d.and_then(|d| d.comment.as_deref()) {
        Some(c) => format!("\nReviewer's comment: {c}"),
        None => "\nReviewer's comment: (none)".to_string(),
    };
    let text = match r.state {
        State::Approved => format!(
            "APPROVED: request {} \"{}\" was approved by {by} at {at}.{comment}\nYou may go ahead, within what the comment allows.",
            r.id, r.title
        ),
        State::Denied => format!(
            "DENIED: request {} \"{}\" was denied by {by} at {at}.{comment}\nDo not go ahead.",
            r.id, r.title
        ),
        State::Expired => format!(
            "EXPIRED: nobody answered request {} \"{}\" before it expired at {at}.\nDo not go ahead; ask again with request_approval if it is still needed.",
            r.id, r.title
        ),
        State::Pending | State::Notice => format!("request {} is {}", r.id, r.state),
    };
    CallToolResult::success(vec![ContentBlock::text(text)])
}

fn still_pending(r: &Record, waited: Duration) -> CallToolResult {
    let text = format!(
        "PENDING: request {id} \"{title}\" has no answer yet (waited {waited}s; it expires at {expires}).\nDo not go ahead yet. Call await_decision with id \"{id}\" to keep waiting.",
        id = r.id,
        title = r.title,
        waited = waited.as_secs(),
        expires = r.expires_at.map(when).unwrap_or_default(),
    );
    CallToolResult::success(vec![ContentBlock::text(text)])
}

/// A refusal the model can act on (a tool error, not a protocol error).
fn refused(e: &QueueError) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(format!("REFUSED: {e}"))])
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("krbottle-supervise", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "A human supervises this session from outside it. Before anything consequential or hard to undo, call request_approval and act only on APPROVED. Use notify to tell them things that need no answer.",
            )
    }
}
