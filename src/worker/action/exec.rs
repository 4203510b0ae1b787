//! `kind = "exec"`: a command whose every argument is a template, run without a shell
//! ([`crate::worker::exec`]); success is exit status 0 within the timeout.

use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::Value;

use super::{Compiler, Firing, Kind, Registration, Request, Runner, Sent};
use crate::telemetry::trace::TraceContext;
use crate::worker::template::TemplateId;

pub(super) const KIND: Registration = Registration {
    name: "exec",
    keys: &["command", "timeout"],
    compile,
};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest captured stdout/stderr, per stream.
const OUTPUT_BYTES: usize = 4096;

#[derive(Deserialize)]
struct Table {
    command: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
}

struct Exec {
    command: Vec<TemplateId>,
    timeout: Duration,
}

fn compile(c: &mut Compiler<'_, '_>) -> Option<Box<dyn Kind>> {
    let table: Table = c.table()?;
    match table.command {
        Some(argv) if !argv.is_empty() => {
            let mut command = Vec::new();
            for (j, arg) in argv.iter().enumerate() {
                if let Some(id) = c.template(&format!("command[{j}]"), arg) {
                    command.push(id);
                }
            }
            (command.len() == argv.len()).then(|| {
                Box::new(Exec {
                    command,
                    timeout: table.timeout.unwrap_or(DEFAULT_TIMEOUT),
                }) as Box<dyn Kind>
            })
        }
        _ => {
            c.problem(
                "command",
                "required for kind \"exec\": an argv list such as [\"/usr/local/bin/x\", \"{{ subject }}\"]"
                    .to_owned(),
            );
            None
        }
    }
}

impl Kind for Exec {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn render(&self, firing: &Firing<'_>) -> Result<Box<dyn Request>, String> {
        let argv = self
            .command
            .iter()
            .map(|id| firing.render(*id))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Box::new(Rendered {
            argv,
            timeout: self.timeout,
        }))
    }
}

/// argv, run without a shell.
#[derive(Debug)]
struct Rendered {
    argv: Vec<String>,
    timeout: Duration,
}

impl Request for Rendered {
    fn describe(&self) -> Value {
        serde_json::json!({
            "argv": self.argv,
            "timeout": humantime::format_duration(self.timeout).to_string(),
        })
    }

    fn send<'a>(&'a self, _: &'a Runner, trace: &'a TraceContext) -> BoxFuture<'a, Sent> {
        async move {
            // As OpenTelemetry's environment carrier names them, for a script that traces.
            let mut env = vec![("TRACEPARENT".to_owned(), trace.traceparent())];
            if let Some(state) = trace.tracestate() {
                env.push(("TRACESTATE".to_owned(), state));
            }
            let outcome =
                crate::worker::exec::run(&self.argv, &env, self.timeout, OUTPUT_BYTES).await;
            let error = (!outcome.ok).then(|| {
                outcome.error.clone().unwrap_or_else(|| {
                    match (outcome.timed_out, outcome.exit_code) {
                        (true, _) => "timed out".to_owned(),
                        (_, Some(code)) => format!("exited with {code}"),
                        _ => "killed by a signal".to_owned(),
                    }
                })
            });
            Sent {
                attempts: 1,
                error,
                detail: serde_json::json!({
                    "exit_code": outcome.exit_code, "timed_out": outcome.timed_out,
                    "stdout": outcome.stdout, "stderr": outcome.stderr,
                }),
            }
        }
        .boxed()
    }
}
