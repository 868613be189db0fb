//! A hyper "hello" server in its own process: the ceiling a publish is compared with.

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::target::Target;

pub(crate) fn hello_server() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("http://{}", l.local_addr().expect("addr"));
        let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async {
            let _ = req.into_body().collect().await;
            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                b"{\"id\":1,\"subscribers\":0}",
            ))))
        });
        // Bounded: the parent kills this process; the loop also ends on accept errors.
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}

pub(crate) fn spawn_hello() -> Result<Target, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .arg("hello-server")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let name = format!("hyper hello (pid {})", child.id());
    Target::spawned(line.trim(), child, name)
}
