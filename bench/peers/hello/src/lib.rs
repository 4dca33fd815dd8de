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
    #[spin_sdk::http_service]
    async fn hello(_req: spin_sdk::http::Request) -> &'static str {
        "hello"
    }
}
