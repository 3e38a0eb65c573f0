//! Kubernetes `Status` answers, shaped as the API server writes them, so that kubectl,
//! client-go and kube-rs show the hub's own refusals (unknown account, disconnected,
//! too slow, not allowed) the way they show the cluster's.

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

/// A `Status` failure.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The HTTP status code (also `code` in the body).
    pub code: StatusCode,
    /// The machine-readable reason, e.g. `NotFound`.
    pub reason: &'static str,
    /// A sentence for the user.
    pub message: String,
    /// `details`, when there is something to say (the name and kind involved).
    pub details: Option<Value>,
}

impl Failure {
    /// A failure with a code, reason and message.
    pub fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 404 for an account this hub does not know.
    pub fn unknown_account(account: &str) -> Failure {
        Failure {
            details: Some(json!({ "name": account, "kind": "accounts" })),
            ..Failure::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("account {account:?} is not known to this hub"),
            )
        }
    }

    /// 503 for an account whose agent is not connected (within its grace period).
    pub fn disconnected(account: &str) -> Failure {
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!(
                "account {account:?} is disconnected: its agent is not streaming it (the hub keeps it for the grace period); retry when the agent is back"
            ),
        )
    }

    /// 401: no or a wrong bearer token.
    pub fn unauthorized() -> Failure {
        Failure::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
    }

    /// 403 with a message.
    pub fn forbidden(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    /// 504: the agent or the cluster did not answer in time.
    pub fn timeout(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::GATEWAY_TIMEOUT, "Timeout", message)
    }

    /// 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// The `Status` object as JSON.
    pub fn body(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let (Some(details), Some(map)) = (&self.details, status.as_object_mut()) {
            map.insert("details".into(), details.clone());
        }
        status
    }

    /// The HTTP answer.
    pub fn response(&self) -> Response<Body> {
        let mut response = json_response(Body::from(self.body().to_string()));
        *response.status_mut() = self.code;
        if self.code == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"scale-agent-hub\""),
            );
        }
        response
    }
}

/// A `200 OK` answer with a JSON body.
pub fn json_response(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_look_like_the_api_servers() {
        let body = Failure::unknown_account("nope").body();
        assert_eq!(body["kind"], "Status");
        assert_eq!(body["apiVersion"], "v1");
        assert_eq!(body["status"], "Failure");
        assert_eq!(body["reason"], "NotFound");
        assert_eq!(body["code"], 404);
        assert_eq!(body["details"]["name"], "nope");
        assert!(body["metadata"].as_object().is_some_and(|m| m.is_empty()));
        let response = Failure::unauthorized().response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
        assert!(Failure::disconnected("a").body().get("details").is_none());
    }
}
