//! The admin token: `Authorization: Bearer …`, compared in constant time. Every route
//! that names clients or hosts (reads too) or changes anything sits behind it, on the
//! LAN listener and the admin listener alike. When none is configured the daemon makes
//! one at first start in `data_path/state/admin-token` (0600) and keeps using it.
use std::{
    io::{Read as _, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use axum::{
    Json,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tracing::warn;

use crate::config::Secret;

/// File name, in `data_path/state`, of the token the daemon makes when none is configured.
pub const TOKEN_FILE: &str = "admin-token";

/// Why the made token could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading the admin token {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the admin token file {path} is empty: delete it to have a new one made")]
    Empty { path: PathBuf },
    #[error("making the admin token {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The token in `path` (its first line), made first when the file does not exist: 32
/// random bytes from the kernel as hex, written 0600 and never over an existing file.
/// `true` when it was made now.
pub fn load_or_make(path: &Path) -> Result<(Secret, bool), TokenError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.lines().next().unwrap_or("").trim();
            if token.is_empty() {
                return Err(TokenError::Empty { path: path.into() });
            }
            return Ok((Secret::from(token.to_owned()), false));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(TokenError::Read {
                path: path.into(),
                source,
            });
        }
    }
    let write = |source| TokenError::Write {
        path: path.into(),
        source,
    };
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(write)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write)?;
    file.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(write)?;
    Ok((Secret::from(token), true))
}

/// Middleware (`axum::middleware::from_fn_with_state(token, auth::require)`): lets a
/// request through only with the configured token.
pub async fn require(State(token): State<Option<Secret>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let error = match (&token, given) {
        (Some(token), Some(given)) if constant_time_eq(token.expose(), given) => {
            return next.run(req).await;
        }
        (None, _) => "no admin token is configured ([admin] token_file): this route answers nobody",
        (Some(_), _) => "a valid admin token is required (Authorization: Bearer …)",
    };
    warn!(path = %req.uri().path(), "admin route without a valid token");
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(serde_json::json!({ "error": error })),
    )
        .into_response()
}

/// Compares without stopping at the first difference, so timing tells nothing but the
/// length.
fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use axum::{Router, body::Body, middleware, routing::get};
    use tower::ServiceExt as _;

    use super::*;

    async fn status(token: Option<&str>, given: Option<&str>) -> StatusCode {
        let app = Router::new()
            .route("/x", get(|| async { "ok" }))
            .route_layer(middleware::from_fn_with_state(
                token.map(|t| t.parse::<Secret>().unwrap()),
                require,
            ));
        let mut req = axum::http::Request::get("/x");
        if let Some(g) = given {
            req = req.header(header::AUTHORIZATION, format!("Bearer {g}"));
        }
        app.oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status()
    }

    #[test]
    fn a_token_is_made_once_and_kept() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("gb10-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(TOKEN_FILE);
        let _ = std::fs::remove_file(&path);
        let (made, fresh) = load_or_make(&path).unwrap();
        assert!(fresh);
        assert_eq!(made.expose().len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, fresh) = load_or_make(&path).unwrap();
        assert!(!fresh);
        assert_eq!(again.expose(), made.expose());
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(load_or_make(&path), Err(TokenError::Empty { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn only_the_token_passes() {
        let t = "0123456789abcdef";
        assert_eq!(status(Some(t), Some(t)).await, StatusCode::OK);
        assert_eq!(
            status(Some(t), Some("0123456789abcdeX")).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(Some(t), Some("short")).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(status(Some(t), None).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status(None, Some(t)).await, StatusCode::UNAUTHORIZED);
    }
}
