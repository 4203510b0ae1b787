//! The worker's web view: read-only pages under `/ui/` on its admin address, for the
//! analyst's "why was this account quarantined?" — the overview, the decisions (filtered), a
//! subject's scores over time with the marks its rules left, and the dead letters. It reads
//! what the worker stores (decision records, subject state, the archive, breakers, watches)
//! and changes none of it; every page answers JSON when asked (`Accept: application/json`).
//!
//! # Layout
//! A request travels: [`WebView::answer`] routes it, checks the token ([`auth`]) and reads
//! its query ([`query`]) → the page's module under [`pages`] reads the store into a value →
//! that value is the JSON answer, or [`render`] puts it (and a [`chart`]) into its template.
//! [`error`] is the one error → status map; [`config`] is `[ui]`.

pub mod auth;
pub mod chart;
pub mod config;
pub mod error;
pub mod pages;
pub mod query;
pub mod render;

use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use serde::Serialize;

use crate::admin::Pages;
use crate::ui::error::UiError;
use crate::ui::query::{DecisionFilter, Params};
use crate::ui::render::{Render, respond, types};
use crate::worker::config::WorkerConfig;
use crate::worker::decide::EventOutcome;
use crate::worker::state::{Store, now_ms};

/// Largest login form read.
const MAX_FORM_BYTES: usize = 4096;

/// The web view: the worker's config (reloaded with it) and its store.
pub struct WebView {
    config: Arc<RwLock<Arc<WorkerConfig>>>,
    store: Arc<dyn Store>,
    render: Arc<Render>,
}

impl WebView {
    /// The view of `store`, configured by `config`'s `[ui]` as it is at each request.
    ///
    /// # Errors
    /// A template does not compile.
    pub fn new(
        config: Arc<RwLock<Arc<WorkerConfig>>>,
        store: Arc<dyn Store>,
    ) -> Result<Self, minijinja::Error> {
        Ok(Self {
            config,
            store,
            render: Arc::new(Render::new()?),
        })
    }
}

impl Pages for WebView {
    fn serves(&self, path: &str) -> bool {
        path == "/ui" || path.starts_with("/ui/")
    }

    fn answer(
        &self,
        request: Request<hyper::body::Incoming>,
    ) -> BoxFuture<'static, Response<Full<Bytes>>> {
        let config = self
            .config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let (store, render) = (self.store.clone(), self.render.clone());
        async move { answer(request, config, store, render).await }.boxed()
    }
}

/// How the answer is written: JSON when the request asks for it over HTML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Html,
    Json,
}

impl Format {
    fn of(request: &Request<hyper::body::Incoming>) -> Self {
        let accept = request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if accept.contains("application/json") && !accept.contains("text/html") {
            Self::Json
        } else {
            Self::Html
        }
    }
}

/// What a route shows.
enum Shown {
    /// A page: its template, title, nav entry, the value (also the JSON answer) and the
    /// extra context only the HTML needs.
    Page {
        template: &'static str,
        title: String,
        nav: &'static str,
        value: serde_json::Value,
        extra: Vec<(&'static str, minijinja::Value)>,
    },
    /// An answer made already (the stylesheet, the login's redirect).
    Done(Response<Full<Bytes>>),
}

async fn answer(
    request: Request<hyper::body::Incoming>,
    config: Arc<WorkerConfig>,
    store: Arc<dyn Store>,
    render: Arc<Render>,
) -> Response<Full<Bytes>> {
    if !config.ui.enabled {
        return respond(StatusCode::NOT_FOUND, types::TEXT, "not found\n");
    }
    let format = Format::of(&request);
    let shown = route(request, &config, store, &render).await;
    match shown {
        Ok(Shown::Done(response)) => response,
        Ok(Shown::Page {
            template,
            title,
            nav,
            value,
            extra,
        }) => match format {
            Format::Json => json(StatusCode::OK, &value),
            Format::Html => {
                let mut context: Vec<(&str, minijinja::Value)> = vec![
                    ("title", title.into()),
                    ("nav", nav.into()),
                    (
                        "page",
                        minijinja::Value::from(minijinja::value::Serde(&value)),
                    ),
                ];
                context.extend(extra);
                let context: std::collections::BTreeMap<&str, minijinja::Value> =
                    context.into_iter().collect();
                let context = minijinja::Value::from(context);
                match render.page(template, context) {
                    Ok(html) => respond(StatusCode::OK, types::HTML, html),
                    Err(err) => failure(&render, format, &err),
                }
            }
        },
        Err(err) => failure(&render, format, &err),
    }
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    respond(status, types::JSON, body)
}

/// The answer to a failure: its status, and the reason as JSON or as a page (the login form
/// for a missing token).
fn failure(render: &Render, format: Format, err: &UiError) -> Response<Full<Bytes>> {
    let status = err.status();
    if matches!(err, UiError::Store(_) | UiError::Render(_)) {
        tracing::error!(error = %err, "web view failed");
    }
    let mut response = match format {
        Format::Json => json(status, &err.json()),
        Format::Html => {
            let page = match err {
                UiError::Unauthorized => render.page(
                    "login.html",
                    minijinja::context! { title => "Log in", nav => "", error => minijinja::Value::from(()) },
                ),
                UiError::WrongToken => render.page(
                    "login.html",
                    minijinja::context! { title => "Log in", nav => "", error => "That is not the token." },
                ),
                _ => render.page(
                    "error.html",
                    minijinja::context! { title => status.to_string(), nav => "", status => status.as_u16(), message => err.to_string() },
                ),
            };
            match page {
                Ok(html) => respond(status, types::HTML, html),
                Err(_) => respond(status, types::TEXT, format!("{err}\n")),
            }
        }
    };
    if matches!(err, UiError::Unauthorized | UiError::WrongToken) {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"hookwarden\""),
        );
    }
    response
}

async fn route(
    request: Request<hyper::body::Incoming>,
    config: &WorkerConfig,
    store: Arc<dyn Store>,
    render: &Render,
) -> Result<Shown, UiError> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    // The stylesheet and the login form are the same for everyone: no token needed.
    match (path.as_str(), &method) {
        ("/ui/static/app.css", &Method::GET | &Method::HEAD) => {
            return Ok(Shown::Done(respond(
                StatusCode::OK,
                types::CSS,
                render::STYLESHEET,
            )));
        }
        ("/ui/login", &Method::GET | &Method::HEAD) => {
            return login_page(render, StatusCode::OK, None).map(Shown::Done);
        }
        ("/ui/login", &Method::POST) => return login(request, config).await,
        _ => {}
    }
    match &config.ui.token {
        Some(token) if !auth::allowed(request.headers(), token) => {
            return Err(UiError::Unauthorized);
        }
        Some(_) => {}
        None => auth::local_only(&request, config.server.admin_listen)?,
    }
    let page = match path.as_str() {
        "/ui" | "/ui/" => Page::Overview,
        "/ui/decisions" => Page::Decisions,
        "/ui/subject" => Page::Subject,
        "/ui/dead-letters" => Page::DeadLetters,
        _ => return Err(UiError::NotFound(format!("no page {path}"))),
    };
    if method != Method::GET && method != Method::HEAD {
        return Err(UiError::MethodNotAllowed(method.to_string()));
    }
    let params = Params::parse(request.uri().query());
    // Reading the store blocks (SQLite, or PostgreSQL through its own runtime).
    let rules_file = config.file.clone();
    let rule_names: Vec<String> = config.rules.rules.iter().map(|r| r.name.clone()).collect();
    tokio::task::spawn_blocking(move || {
        show(page, &params, store.as_ref(), &rules_file, rule_names)
    })
    .await
    .map_err(|err| UiError::Render(format!("the page's task failed: {err}")))?
}

/// The pages that read the store.
#[derive(Debug, Clone, Copy)]
enum Page {
    Overview,
    Decisions,
    Subject,
    DeadLetters,
}

fn to_value(value: &impl Serialize) -> Result<serde_json::Value, UiError> {
    serde_json::to_value(value).map_err(|err| UiError::Render(err.to_string()))
}

fn show(
    page: Page,
    params: &Params,
    store: &dyn Store,
    rules_file: &str,
    rule_names: Vec<String>,
) -> Result<Shown, UiError> {
    let before = params
        .get("before")
        .map(|_| DecisionFilter::parse(params).map(|f| f.before))
        .transpose()?
        .flatten();
    Ok(match page {
        Page::Overview => {
            let overview = pages::overview::find(store)?;
            let chart = chart::per_minute(&overview.minutes, overview.since_ms, now_ms());
            Shown::Page {
                template: "overview.html",
                title: "Overview".to_owned(),
                nav: "overview",
                value: to_value(&overview)?,
                extra: vec![("chart", safe(chart))],
            }
        }
        Page::Decisions => {
            let filter = DecisionFilter::parse(params)?;
            let found = pages::decisions::find(store, &filter, "/ui/decisions")?;
            let form = minijinja::context! {
                subject => filter.subject_key.clone().unwrap_or_default(),
                event => filter.event_key.clone().unwrap_or_default(),
                rule => filter.rule.clone().unwrap_or_default(),
                outcome => filter.outcome.map(EventOutcome::as_str).unwrap_or_default(),
                provider => filter.provider.clone().unwrap_or_default(),
                from => params.get("from").unwrap_or_default(),
                to => params.get("to").unwrap_or_default(),
            };
            let outcomes: Vec<&str> = EventOutcome::ALL.iter().map(|o| o.as_str()).collect();
            Shown::Page {
                template: "decisions.html",
                title: "Decisions".to_owned(),
                nav: "decisions",
                value: to_value(&found)?,
                extra: vec![
                    ("form", form),
                    (
                        "outcomes",
                        minijinja::Value::from(minijinja::value::Serde(outcomes)),
                    ),
                    (
                        "rule_names",
                        minijinja::Value::from(minijinja::value::Serde(rule_names)),
                    ),
                ],
            }
        }
        Page::Subject => {
            let key = params.get("key").ok_or_else(|| {
                UiError::BadRequest("key: give the subject as provider/subject".to_owned())
            })?;
            let found = pages::subject::find(store, key, before.as_ref())?
                .ok_or_else(|| UiError::NotFound(format!("no subject {key} in the state store")))?;
            let chart = chart::scores(&found.key, &found.score_names, &found.points);
            Shown::Page {
                template: "subject.html",
                title: format!("Subject {key}"),
                nav: "",
                value: to_value(&found)?,
                extra: vec![("chart", safe(chart))],
            }
        }
        Page::DeadLetters => {
            let found = pages::dead_letters::find(store, before.as_ref(), rules_file)?;
            Shown::Page {
                template: "dead_letters.html",
                title: "Dead letters".to_owned(),
                nav: "dead_letters",
                value: to_value(&found)?,
                extra: Vec::new(),
            }
        }
    })
}

/// Our own SVG, put into the page as markup (plotters escaped the text inside it).
fn safe(svg: Option<String>) -> minijinja::Value {
    match svg {
        Some(svg) => minijinja::Value::from_safe_string(svg),
        None => minijinja::Value::from(()),
    }
}

fn login_page(
    render: &Render,
    status: StatusCode,
    error: Option<&str>,
) -> Result<Response<Full<Bytes>>, UiError> {
    let html = render.page(
        "login.html",
        minijinja::context! { title => "Log in", nav => "", error => error },
    )?;
    Ok(respond(status, types::HTML, html))
}

/// The login form's POST: the token right sets the session cookie and goes to the overview;
/// wrong, the form again with 401.
async fn login(
    request: Request<hyper::body::Incoming>,
    config: &WorkerConfig,
) -> Result<Shown, UiError> {
    let Some(token) = &config.ui.token else {
        // No token configured: nothing to log in to.
        let mut response = respond(StatusCode::SEE_OTHER, types::TEXT, "");
        response
            .headers_mut()
            .insert(header::LOCATION, header::HeaderValue::from_static("/ui/"));
        return Ok(Shown::Done(response));
    };
    let https = request
        .headers()
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let body = Limited::new(request.into_body(), MAX_FORM_BYTES)
        .collect()
        .await
        .map_err(|_| UiError::TooLarge(MAX_FORM_BYTES))?
        .to_bytes();
    let given = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if !auth::accepts(&given, token) {
        return Err(UiError::WrongToken);
    }
    let mut response = respond(StatusCode::SEE_OTHER, types::TEXT, "");
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, header::HeaderValue::from_static("/ui/"));
    if let Ok(cookie) = header::HeaderValue::from_str(&auth::set_cookie(token, https)) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    Ok(Shown::Done(response))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ui::query::Cursor;

    #[test]
    fn the_templates_compile() {
        assert!(Render::new().is_ok());
    }

    #[test]
    fn a_page_position_reads_as_a_cursor() {
        let params = Params::parse(Some("before=5.acme%2Fe"));
        let filter = DecisionFilter::parse(&params).unwrap();
        assert_eq!(
            filter.before,
            Some(Cursor {
                at_ms: 5,
                event_key: "acme/e".into()
            })
        );
    }
}
