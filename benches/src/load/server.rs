//! The server under test as child processes: each started from a shell
//! command (`exec`ed, so its pid is the server's own), restarted for the
//! reconnect storm, and read from `/proc` for memory and CPU time. A server
//! may be several processes that are one server through a broker
//! ([`Servers`]); its memory and CPU time are then their sums.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep};

#[derive(Debug)]
pub(crate) struct ServerProcess {
    command: String,
    log: String,
    addr: SocketAddr,
    child: Child,
}

impl ServerProcess {
    /// Starts `command` with `sh -c "exec …"`, its output appended to `log`,
    /// and waits until `addr` accepts connections.
    pub(crate) async fn start(command: &str, log: &str, addr: SocketAddr) -> anyhow::Result<ServerProcess> {
        // A server left over from an interrupted run would take the clients
        // while the new one fails to bind, and the figures would be its own.
        if TcpStream::connect(addr).await.is_ok() {
            bail!("something already listens on {addr}, perhaps a server left from an earlier run; stop it first");
        }
        let child = spawn(command, log)?;
        let mut server = ServerProcess { command: command.to_owned(), log: log.to_owned(), addr, child };
        server.wait_listening().await?;
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_listening(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the server exited with {status} before listening; see {}", self.log);
            }
            if TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the server did not listen on {} within 30 s; see {}", self.addr, self.log);
            }
            sleep(Duration::from_millis(5)).await;
        }
    }

    /// Asks the server to stop (SIGTERM) and waits for it; SIGKILL after 15 s.
    pub(crate) async fn stop(&mut self) -> anyhow::Result<()> {
        signal(self.pid(), "TERM")?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                signal(self.pid(), "KILL")?;
                self.child.wait()?;
                return Ok(());
            }
            sleep(Duration::from_millis(5)).await;
        }
    }

    /// Resident memory in KiB (`VmRSS`).
    pub(crate) fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("VmRSS not found")
    }

    /// User plus system CPU time in seconds.
    pub(crate) fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds_of(&self.pid().to_string())
    }

    /// The server's user and system CPU time so far, in seconds.
    pub(crate) fn cpu_split(&self) -> anyhow::Result<(f64, f64)> {
        cpu_split_of(&self.pid().to_string())
    }
}

/// User plus system CPU time of a process (`self` for this one), in seconds.
pub(crate) fn cpu_seconds_of(pid: &str) -> anyhow::Result<f64> {
    let (user, system) = cpu_split_of(pid)?;
    Ok(user + system)
}

/// User and system (kernel) CPU time of a process, in seconds.
pub(crate) fn cpu_split_of(pid: &str) -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').context("malformed stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) as f64 / clock_ticks();
    Ok((ticks(11), ticks(12)))
}

/// The server under test: one process, or several that are one server
/// through a broker, each listening on its own address.
#[derive(Debug)]
pub(crate) struct Servers {
    procs: Vec<ServerProcess>,
}

impl Servers {
    /// Starts one process per (command, log, address), in that order, each
    /// listening before the next starts.
    pub(crate) async fn start(commands: &[String], logs: &[String], addrs: &[SocketAddr]) -> anyhow::Result<Servers> {
        let mut procs = Vec::with_capacity(commands.len());
        for ((command, log), addr) in commands.iter().zip(logs).zip(addrs) {
            procs.push(ServerProcess::start(command, log, *addr).await?);
        }
        Ok(Servers { procs })
    }

    /// How many processes the server is.
    pub(crate) fn len(&self) -> usize {
        self.procs.len()
    }

    /// Stops every process.
    pub(crate) async fn stop(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            p.stop().await?;
        }
        Ok(())
    }

    /// Stops every process, then starts each again on its command (and so
    /// the same database), returning once all listen.
    pub(crate) async fn restart(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            p.stop().await?;
        }
        for p in &mut self.procs {
            p.child = spawn(&p.command, &p.log)?;
            p.wait_listening().await?;
        }
        Ok(())
    }

    /// Resident memory of all processes together, in KiB.
    pub(crate) fn rss_kib(&self) -> anyhow::Result<u64> {
        self.procs.iter().map(ServerProcess::rss_kib).sum()
    }

    /// Resident memory of each process, in KiB.
    pub(crate) fn rss_kib_each(&self) -> anyhow::Result<Vec<u64>> {
        self.procs.iter().map(ServerProcess::rss_kib).collect()
    }

    /// User plus system CPU time of all processes together, in seconds.
    pub(crate) fn cpu_seconds(&self) -> anyhow::Result<f64> {
        self.procs.iter().map(ServerProcess::cpu_seconds).sum()
    }

    /// User plus system CPU time of each process, in seconds.
    pub(crate) fn cpu_seconds_each(&self) -> anyhow::Result<Vec<f64>> {
        self.procs.iter().map(ServerProcess::cpu_seconds).collect()
    }

    /// User and system CPU time of all processes together, in seconds.
    pub(crate) fn cpu_split(&self) -> anyhow::Result<(f64, f64)> {
        let mut total = (0.0, 0.0);
        for p in &self.procs {
            let (user, system) = p.cpu_split()?;
            total.0 += user;
            total.1 += system;
        }
        Ok(total)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = signal(self.pid(), "KILL");
            let _ = self.child.wait();
        }
    }
}

fn spawn(command: &str, log: &str) -> anyhow::Result<Child> {
    let out = OpenOptions::new().create(true).append(true).open(log).with_context(|| format!("opening {log}"))?;
    let err = out.try_clone()?;
    Command::new("sh")
        .arg("-c")
        .arg(format!("exec {command}"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {command}"))
}

fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status()?;
    if !status.success() {
        bail!("kill -{name} {pid} failed");
    }
    Ok(())
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
