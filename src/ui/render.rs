//! The pages' HTML: minijinja templates compiled into the binary, HTML-escaped everywhere
//! whatever a template's name (minijinja picks escaping by file name otherwise), and strict
//! about undefined names; and the headers every answer carries, the Content-Security-Policy
//! first: no script at all, styles and images from this address only.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};

use crate::ui::error::UiError;

/// The policy every answer carries. No `script-src`: `default-src 'none'` forbids script
/// of any kind, so markup that escaped our escaping still could not run.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The stylesheet, served at `/ui/static/app.css`.
pub const STYLESHEET: &str = include_str!("static/app.css");

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("overview.html", include_str!("templates/overview.html")),
    ("decisions.html", include_str!("templates/decisions.html")),
    ("rows.html", include_str!("templates/rows.html")),
    ("subject.html", include_str!("templates/subject.html")),
    (
        "dead_letters.html",
        include_str!("templates/dead_letters.html"),
    ),
    ("login.html", include_str!("templates/login.html")),
    ("error.html", include_str!("templates/error.html")),
];

/// The compiled templates.
pub struct Render {
    env: Environment<'static>,
}

impl Render {
    /// Compiles the templates.
    ///
    /// # Errors
    /// A template that does not compile (a defect caught by the unit tests).
    pub fn new() -> Result<Self, minijinja::Error> {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| AutoEscape::Html);
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        for (name, source) in TEMPLATES {
            env.add_template(name, source)?;
        }
        Ok(Self { env })
    }

    /// Renders `template` with `context`.
    ///
    /// # Errors
    /// The template failed (an undefined name, say).
    pub fn page(&self, template: &str, context: minijinja::Value) -> Result<String, UiError> {
        self.env
            .get_template(template)
            .and_then(|t| t.render(context))
            .map_err(|err| UiError::Render(format!("{template}: {err}")))
    }
}

/// An answer with the view's headers.
pub fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Content types.
pub mod types {
    /// HTML pages.
    pub const HTML: &str = "text/html; charset=utf-8";
    /// JSON answers.
    pub const JSON: &str = "application/json";
    /// The stylesheet.
    pub const CSS: &str = "text/css; charset=utf-8";
    /// Plain text.
    pub const TEXT: &str = "text/plain; charset=utf-8";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_escapes_html_whatever_its_name() {
        let render = Render::new().unwrap();
        let html = render
            .page(
                "error.html",
                minijinja::Value::from(minijinja::value::Serde(serde_json::json!({
                    "title": "x", "status": 400, "nav": "",
                    "message": "<script>document.title='pwned'</script>\"><img src=x onerror=alert(1)>",
                }))),
            )
            .unwrap();
        assert!(!html.contains("<script>document"), "{html}");
        assert!(!html.contains("<img src=x"), "{html}");
        assert!(
            html.contains("&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;&#x2f;script&gt;"),
            "{html}"
        );
    }

    #[test]
    fn an_undefined_name_is_an_error_not_an_empty_string() {
        let render = Render::new().unwrap();
        let err = render
            .page("error.html", minijinja::context! {})
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("rendering the page: error.html: "),
            "{err}"
        );
    }
}
