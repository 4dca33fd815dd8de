//! Hello world on each host, built the same way as edge-enrich: the floor a handler cannot beat.

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
mod workers {
    use worker::{event, Context, Env, Request, Response, Result};

    #[event(fetch)]
    async fn fetch(_req: Request, _env: Env, _ctx: Context) -> Result<Response> {
        Response::ok("hello")
    }
}

#[cfg(all(target_os = "wasi", target_env = "p2"))]
mod wasi {
    use spin_sdk::http::{FullBody, Request};

    /// Framed by its length, as edge-enrich's answers are: a chunked answer's last chunk waits
    /// for the client's delayed ACK on Spin (see `hosts::spin::framed_by_length`).
    #[spin_sdk::http_service]
    async fn hello(_req: Request) -> http::Response<FullBody<bytes::Bytes>> {
        http::Response::builder()
            .header(http::header::CONTENT_LENGTH, "5")
            .body(FullBody::new(bytes::Bytes::from_static(b"hello")))
            .expect("a static answer")
    }
}
