//! nginx as the reference web server of the benchmarks and the e2e scenarios: one
//! worker in the foreground, every file it writes under the lab directory.
use std::path::{Path, PathBuf};

/// Writes `dir/nginx.conf` serving `root` on `listen` (`ip:port`) and returns its path.
/// `http` and `server` are extra directives for those blocks.
pub fn config(
    dir: &Path,
    listen: &str,
    root: &Path,
    http: &str,
    server: &str,
) -> std::io::Result<PathBuf> {
    config_for(dir, listen, root, http, server, 1024)
}

/// As [`config`], with room for `connections` at once (`worker_connections`, which
/// counts the listening socket and every client).
pub fn config_for(
    dir: &Path,
    listen: &str,
    root: &Path,
    http: &str,
    server: &str,
    connections: usize,
) -> std::io::Result<PathBuf> {
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "user root;\nworker_processes 1;\ndaemon off;\npid {dir}/nginx.pid;\n\
             error_log {dir}/nginx-error.log;\nevents {{ worker_connections {connections}; }}\n\
             http {{\n  sendfile on;\n  {http}\n\
             client_body_temp_path {dir}/ngx; proxy_temp_path {dir}/ngx;\n\
             fastcgi_temp_path {dir}/ngx; uwsgi_temp_path {dir}/ngx; scgi_temp_path {dir}/ngx;\n\
             server {{\n    listen {listen};\n    root {root};\n    {server}\n  }}\n}}\n",
            dir = dir.display(),
            root = root.display(),
        ),
    )?;
    Ok(conf)
}
