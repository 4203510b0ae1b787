//! `kind = "log"`: a structured log line naming the rule (and, through the worker's
//! `delivery` span, the event and subject), its text a template (default `rule matched`).

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::Value;

use super::{Compiler, Firing, Kind, Registration, Request, Runner, Sent};
use crate::telemetry::trace::TraceContext;
use crate::worker::template::TemplateId;

pub(super) const KIND: Registration = Registration {
    name: "log",
    keys: &["message"],
    compile,
};

#[derive(Deserialize)]
struct Table {
    message: Option<String>,
}

struct Log {
    message: Option<TemplateId>,
}

fn compile(c: &mut Compiler<'_, '_>) -> Option<Box<dyn Kind>> {
    let table: Table = c.table()?;
    let message = match table.message.as_deref() {
        Some(m) => Some(c.template("message", m)?),
        None => None,
    };
    Some(Box::new(Log { message }))
}

impl Kind for Log {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn render(&self, firing: &Firing<'_>) -> Result<Box<dyn Request>, String> {
        let text = match self.message {
            Some(id) => firing.render(id)?,
            None => "rule matched".to_owned(),
        };
        Ok(Box::new(Rendered {
            text,
            rule: firing.rule.to_owned(),
        }))
    }
}

/// The line's text and its rule; the worker's `delivery` span adds the event's `provider`,
/// `event_id` and `subject`.
#[derive(Debug)]
struct Rendered {
    text: String,
    rule: String,
}

impl Request for Rendered {
    fn describe(&self) -> Value {
        serde_json::json!({ "message": self.text })
    }

    fn send<'a>(&'a self, _: &'a Runner, _: &'a TraceContext) -> BoxFuture<'a, Sent> {
        // The rendered text goes under `text`: `message` is the formatter's own key (here
        // "action"), and a JSON line naming it twice is ambiguous to log readers.
        tracing::info!(rule = %self.rule, text = %self.text, "action");
        Box::pin(std::future::ready(Sent {
            attempts: 1,
            ..Sent::default()
        }))
    }
}
