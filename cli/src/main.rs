//! `bulkhead`: the admin CLI. Every command is a call on domaind's D-Bus API
//! (`org.bulkhead.Domaind1`); this binary holds no state of its own.
#![forbid(unsafe_code)]

mod cli;
mod console;
mod failure;
mod progress;
mod terminal;
mod usb;

use bulkhead_api::{DomainInfo, Domaind1Proxy};
use clap::Parser;
use cli::{
    AppmenusArgs, Cli, Command, CreateArgs, FirewallArgs, FirewallCommand, LsArgs, PolicyCommand,
    PrefsArgs, RunArgs, TemplateCommand,
};
use failure::{Code, Failure};
use futures_util::StreamExt;
use progress::Progress;
use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;
use zbus::zvariant::Fd;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bulkhead: cannot start: {e}");
            return ExitCode::from(Code::Failure as u8);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(failure) => {
            // Messages can quote a domain's log or its agent: never raw to a terminal.
            eprintln!("bulkhead: {}", terminal::sanitize_line(&failure.message));
            failure.exit_code()
        }
    }
}

async fn connect(address: Option<&str>) -> Result<Domaind1Proxy<'static>, Failure> {
    let connection = bulkhead_api::connect(address).await.map_err(|e| {
        Failure::new(
            Code::Unreachable,
            format!(
                "cannot connect to {}: {e} (is dbus running? for a private bus set BULKHEAD_BUS_ADDRESS)",
                address.unwrap_or("the system bus")
            ),
        )
    })?;
    Ok(Domaind1Proxy::new(&connection).await?)
}

async fn dispatch(cli: Cli) -> Result<ExitCode, Failure> {
    // Checking policy files needs no domaind: an admin lints before installing them.
    if let Command::Policy(PolicyCommand::Check { dir }) = &cli.command {
        return policy_check(dir);
    }
    let proxy = connect(cli.bus_address.as_deref()).await;
    // `run` reports its own failures with Qubes' codes (125/126), so scripts can tell them
    // apart from the command's own exit status.
    if let Command::Run(args) = cli.command {
        let proxy = proxy.map_err(Failure::for_run)?;
        return run(&proxy, args).await.map_err(Failure::for_run);
    }
    let proxy = proxy?;
    match cli.command {
        Command::Ls(args) => ls(&proxy, args).await?,
        Command::Create(args) => create(&proxy, args).await?,
        Command::Clone { source, dest } => proxy.clone_domain(&source, &dest).await?,
        Command::Rm { names } => {
            for name in names {
                proxy.remove(&name).await?;
            }
            // Their menu entries go too (this user's; dom0-ui refreshes the desktop user's).
            if let Err(e) = sync_menus(&proxy).await {
                eprintln!("bulkhead: menu entries not refreshed: {}", e.message);
            }
        }
        Command::Start { names } => {
            for name in names {
                start(&proxy, &name).await?;
            }
        }
        Command::Shutdown { names, timeout } => {
            for name in names {
                proxy.shutdown(&name, timeout).await?;
            }
        }
        Command::Kill { names } => {
            for name in names {
                proxy.kill(&name).await?;
            }
        }
        Command::Pause { names } => {
            for name in names {
                proxy.pause(&name).await?;
            }
        }
        Command::Unpause { names } => {
            for name in names {
                proxy.unpause(&name).await?;
            }
        }
        Command::Prefs(args) => prefs(&proxy, args).await?,
        Command::Log { name } => log(&proxy, &name).await?,
        Command::Console { name } => console::console(&proxy, &name).await?,
        Command::Template(TemplateCommand::Install { name }) => {
            template_build(&proxy, &name).await?
        }
        Command::Template(TemplateCommand::List { json }) => template_list(&proxy, json).await?,
        Command::Template(TemplateCommand::Remove { name }) => {
            template_remove(&proxy, &name).await?
        }
        Command::Template(TemplateCommand::Clone { source, dest }) => {
            let root = proxy.clone_template(&source, &dest).await?;
            println!("{dest}: {root}");
        }
        Command::Template(TemplateCommand::Revert { name }) => {
            template_revert(&proxy, &name).await?
        }
        Command::Firewall(args) => firewall(&proxy, args).await?,
        Command::Usb(cmd) => usb::usb(&proxy, cmd).await?,
        Command::App { domain, desktop_id } => proxy.run_application(&domain, &desktop_id).await?,
        Command::Appmenus(args) => appmenus(&proxy, args).await?,
        Command::Run(_) | Command::Policy(_) => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(serde::Serialize)]
struct Row<'a> {
    name: &'a str,
    class: &'a str,
    state: &'a str,
    label: &'a str,
    isolation: &'a str,
    memory_mib: u32,
    vcpus: u32,
    template: &'a str,
    netvm: &'a str,
}

impl<'a> From<&'a DomainInfo> for Row<'a> {
    fn from(d: &'a DomainInfo) -> Self {
        Row {
            name: &d.name,
            class: &d.class,
            state: &d.state,
            label: &d.label,
            isolation: &d.isolation,
            memory_mib: d.memory_mib,
            vcpus: d.vcpus,
            template: &d.template,
            netvm: &d.netvm,
        }
    }
}

/// `value` as pretty JSON and a newline (the `--json` of `ls` and `template list`).
fn write_json(out: &mut impl Write, value: &impl serde::Serialize) -> Result<(), Failure> {
    serde_json::to_writer_pretty(&mut *out, value)
        .map_err(|e| Failure::new(Code::Failure, format!("cannot write JSON: {e}")))?;
    writeln!(out).ok();
    Ok(())
}

async fn ls(proxy: &Domaind1Proxy<'_>, args: LsArgs) -> Result<(), Failure> {
    let mut domains = proxy.list().await?;
    domains.sort_by(|a, b| a.name.cmp(&b.name));
    let rows: Vec<Row<'_>> = domains.iter().map(Row::from).collect();
    let mut out = std::io::stdout().lock();
    if args.json {
        return write_json(&mut out, &rows);
    }
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    writeln!(
        out,
        "{:width$}  {:19}  {:8}  {:7}  {:>9}  ISOLATION",
        "NAME", "CLASS", "STATE", "LABEL", "MEMORY"
    )
    .ok();
    for r in &rows {
        writeln!(
            out,
            "{:width$}  {:19}  {:8}  {:7}  {:>5} MiB  {}",
            r.name, r.class, r.state, r.label, r.memory_mib, r.isolation
        )
        .ok();
    }
    Ok(())
}

async fn create(proxy: &Domaind1Proxy<'_>, args: CreateArgs) -> Result<(), Failure> {
    let mut props: HashMap<&str, &str> = HashMap::new();
    for kv in &args.properties {
        let (k, v) = kv.split_once('=').ok_or_else(|| {
            Failure::new(
                Code::InvalidInput,
                format!("property '{kv}' is not KEY=VALUE"),
            )
        })?;
        props.insert(k, v);
    }
    proxy
        .create(&args.name, &args.class, &args.template, &args.label, props)
        .await?;
    Ok(())
}

async fn prefs(proxy: &Domaind1Proxy<'_>, args: PrefsArgs) -> Result<(), Failure> {
    match (args.property, args.value) {
        (Some(prop), Some(value)) => proxy.set_property(&args.name, &prop, &value).await?,
        (Some(prop), None) => {
            let all = proxy.get_properties(&args.name).await?;
            let value = all.get(&prop).ok_or_else(|| {
                let known: Vec<&str> = all.keys().map(String::as_str).collect();
                Failure::new(
                    Code::InvalidInput,
                    format!("no property '{prop}' (known: {})", known.join(", ")),
                )
            })?;
            println!("{value}");
        }
        (None, _) => {
            let all = proxy.get_properties(&args.name).await?;
            let sorted: std::collections::BTreeMap<_, _> = all.into_iter().collect();
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&sorted).map_err(|e| Failure::new(
                        Code::Failure,
                        format!("cannot write JSON: {e}")
                    ))?
                );
            } else {
                let width = sorted.keys().map(String::len).max().unwrap_or(0);
                for (k, v) in sorted {
                    println!("{k:width$}  {v}");
                }
            }
        }
    }
    Ok(())
}

/// Starts a domain while showing domaind's progress signals for it.
async fn start(proxy: &Domaind1Proxy<'_>, name: &str) -> Result<(), Failure> {
    let mut signals = proxy.receive_progress().await?;
    let progress = Progress::new(&format!("start {name}"));
    let call = proxy.start(name);
    tokio::pin!(call);
    loop {
        tokio::select! {
            result = &mut call => {
                return match result {
                    Ok(()) => { progress.finish("running"); Ok(()) }
                    Err(e) => { progress.abandon(); Err(e.into()) }
                };
            }
            Some(signal) = signals.next() => {
                if let Ok(args) = signal.args() {
                    if args.name == name {
                        progress.step(&args.step, args.done, args.total);
                    }
                }
            }
        }
    }
}

async fn run(proxy: &Domaind1Proxy<'_>, args: RunArgs) -> Result<ExitCode, Failure> {
    let filter = !args.no_filter_escape_chars;
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let (o, stdout_pump) = output_fd(stdout.as_fd(), filter && stdout.is_terminal(), Sink::Stdout)?;
    let (e, stderr_pump) = output_fd(stderr.as_fd(), filter && stderr.is_terminal(), Sink::Stderr)?;
    let i = Fd::from(stdin.as_fd());
    let argv: Vec<&str> = args.command.iter().map(String::as_str).collect();
    let status = if args.service {
        // TARGET SERVICE[+ARG], before or after `--`.
        let words: Vec<&str> = args
            .name
            .iter()
            .chain(args.service_name.iter())
            .map(String::as_str)
            .chain(argv.iter().copied())
            .collect();
        let [target, service] = words[..] else {
            return Err(Failure::new(
                Code::InvalidInput,
                "--service takes exactly TARGET and SERVICE[+ARG]",
            ));
        };
        proxy.call(target, service, i, o, e).await
    } else {
        match (&args.dispvm, &args.name) {
            (Some(base), _) => proxy
                .run_disposable(base, &argv, &args.user, i, o, e)
                .await
                .map(|(_disposable, status)| status),
            (None, Some(_)) if args.service_name.is_some() => {
                return Err(Failure::new(
                    Code::InvalidInput,
                    "put the command after `--` (bulkhead run DOMAIN -- COMMAND...)",
                ))
            }
            (None, Some(name)) => proxy.run(name, &argv, &args.user, i, o, e).await,
            (None, None) => {
                return Err(Failure::new(
                    Code::InvalidInput,
                    "give a domain or --dispvm TEMPLATE",
                ))
            }
        }
    };
    // Our ends of the pipes are gone with the call; drain what domaind wrote.
    for pump in [stdout_pump, stderr_pump].into_iter().flatten() {
        pump.finish();
    }
    let status = status?;
    // A status outside 0..=255 cannot come from a well-behaved agent; report it as a failure.
    Ok(ExitCode::from(
        u8::try_from(status).unwrap_or(Code::RunFailed as u8),
    ))
}

#[derive(Clone, Copy)]
enum Sink {
    Stdout,
    Stderr,
}

/// A thread copying a pipe to our terminal through the escape filter.
struct Pump {
    done: std::sync::mpsc::Receiver<()>,
}

impl Pump {
    /// Waits for the copy to end; a stuck pipe (some process still holding the write end)
    /// does not keep the CLI from exiting.
    fn finish(self) {
        let _ = self.done.recv_timeout(std::time::Duration::from_secs(5));
    }
}

/// The fd to hand domaind for an output stream: our own, or a pipe through the escape filter.
fn output_fd(
    fd: std::os::fd::BorrowedFd<'_>,
    filter: bool,
    sink: Sink,
) -> Result<(Fd<'_>, Option<Pump>), Failure> {
    if !filter {
        return Ok((Fd::from(fd), None));
    }
    let (reader, writer) = nix::unistd::pipe()
        .map_err(|e| Failure::new(Code::Failure, format!("cannot create a pipe: {e}")))?;
    let (tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = match sink {
            Sink::Stdout => terminal::pump(reader, std::io::stdout()),
            Sink::Stderr => terminal::pump(reader, std::io::stderr()),
        };
        let _ = tx.send(());
    });
    Ok((Fd::from(writer), Some(Pump { done })))
}

/// Prints the domain's log through a descriptor domaind opens for us (the log directory is
/// root-only, so bulkhead-admin members could not open the file themselves).
async fn log(proxy: &Domaind1Proxy<'_>, name: &str) -> Result<(), Failure> {
    let fd: std::os::fd::OwnedFd = proxy.open_log(name).await?.into();
    let printed = if std::io::stdout().is_terminal() {
        terminal::pump(fd, std::io::stdout().lock())
    } else {
        let mut file = std::fs::File::from(fd);
        std::io::copy(&mut file, &mut std::io::stdout().lock()).map(drop)
    };
    printed.map_err(|e| {
        Failure::new(
            Code::Failure,
            format!("cannot print the log of '{name}': {e}"),
        )
    })
}

async fn firewall(proxy: &Domaind1Proxy<'_>, args: FirewallArgs) -> Result<(), Failure> {
    let d = &args.domain;
    match args.command {
        FirewallCommand::List => {
            let rules = proxy.firewall_list(d).await?;
            if rules.is_empty() {
                println!("(no rules: everything is allowed except other domains)");
            }
            for (i, r) in rules.iter().enumerate() {
                println!("{i:>3}  {r}");
            }
        }
        FirewallCommand::Add { before, rule } => {
            let pos = before.map_or(-1, |b| i32::try_from(b).unwrap_or(i32::MAX));
            proxy.firewall_add(d, &rule.join(" "), pos).await?
        }
        FirewallCommand::Del { index } => proxy.firewall_del(d, index).await?,
        FirewallCommand::Reset => proxy.firewall_reset(d).await?,
    }
    Ok(())
}

fn policy_check(dir: &std::path::Path) -> Result<ExitCode, Failure> {
    let diagnostics = bulkhead_policy::check(dir);
    if diagnostics.is_empty() {
        println!("{}: no errors", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    for d in &diagnostics {
        println!("{d}");
    }
    Err(Failure::new(
        Code::InvalidInput,
        format!(
            "{} error(s) in {}: until they are fixed every call between domains is denied",
            diagnostics.len(),
            dir.display()
        ),
    ))
}

/// Builds a template; domaind writes human progress lines into a pipe we hand it.
/// `features.menu-items` of `name` as desktop ids.
async fn menu_items(proxy: &Domaind1Proxy<'_>, name: &str) -> Result<Vec<String>, Failure> {
    bulkhead_appmenus::menu_items(proxy, name)
        .await
        .map_err(menu_failure)
}

fn menu_failure(e: bulkhead_appmenus::AppMenuError) -> Failure {
    match e {
        bulkhead_appmenus::AppMenuError::Domaind(e) => e.into(),
        e => Failure::new(Code::Failure, e.to_string()),
    }
}

/// Rewrites this user's menu entries of every domain; returns what changed.
async fn sync_menus(proxy: &Domaind1Proxy<'_>) -> Result<bulkhead_appmenus::Applied, Failure> {
    let me = std::env::current_exe()
        .ok()
        .and_then(|p| p.to_str().map(str::to_owned))
        .unwrap_or_else(|| "bulkhead".into());
    let (applied, missing) = bulkhead_appmenus::sync(proxy, &me)
        .await
        .map_err(menu_failure)?;
    for m in missing {
        eprintln!("bulkhead: menu: {m}");
    }
    Ok(applied)
}

async fn appmenus(proxy: &Domaind1Proxy<'_>, args: AppmenusArgs) -> Result<(), Failure> {
    if let (Some(domain), Some(ids)) = (&args.domain, &args.set) {
        if let Some(bad) = ids.iter().find(|i| !bulkhead_appmenus::valid_id(i)) {
            return Err(Failure::new(
                Code::InvalidInput,
                format!("'{bad}' is not a desktop id (NAME.desktop)"),
            ));
        }
        proxy
            .set_property(
                domain,
                &format!("features.{}", bulkhead_appmenus::FEATURE),
                &ids.join(" "),
            )
            .await?;
    }
    if args.list {
        let Some(domain) = &args.domain else {
            return Err(Failure::new(Code::InvalidInput, "--list needs a domain"));
        };
        let chosen = menu_items(proxy, domain).await?;
        let mut out = std::io::stdout().lock();
        for (id, name, _) in proxy.list_applications(domain).await? {
            // Ids come from the template: only those a menu entry may name are shown.
            if !bulkhead_appmenus::valid_id(&id) {
                continue;
            }
            let mark = if chosen.contains(&id) { '*' } else { ' ' };
            writeln!(out, "{mark} {id}  {}", bulkhead_appmenus::clean_name(&name)).ok();
        }
        return Ok(());
    }
    let done = sync_menus(proxy).await?;
    for f in &done.written {
        println!("written {f}");
    }
    for f in &done.removed {
        println!("removed {f}");
    }
    Ok(())
}

async fn template_list(proxy: &Domaind1Proxy<'_>, json: bool) -> Result<(), Failure> {
    let rows = proxy.list_templates().await?;
    let mut out = std::io::stdout().lock();
    if json {
        return write_json(&mut out, &rows);
    }
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    writeln!(
        out,
        "{:width$}  {:9}  {:12}  CHANGED / DETAIL",
        "NAME", "STATE", "RECIPE"
    )
    .ok();
    for r in &rows {
        let when = if r.changed_at > 0 {
            format!("changed {}", ago(r.changed_at))
        } else if r.built_at > 0 {
            format!("built {}", ago(r.built_at))
        } else {
            String::new()
        };
        let detail = [when.as_str(), r.detail.as_str()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        writeln!(
            out,
            "{:width$}  {:9}  {:12}  {detail}",
            r.name, r.state, r.recipe
        )
        .ok();
    }
    Ok(())
}

/// "N minutes ago" and the like, for Unix time `t`.
fn ago(t: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let s = now.saturating_sub(t);
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        7200..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

async fn template_revert(proxy: &Domaind1Proxy<'_>, name: &str) -> Result<(), Failure> {
    let root = proxy.revert_template(name).await?;
    // Which root that is, said as `template list` says it (the list is only for the words:
    // the revert is done whatever it answers).
    let row = proxy
        .list_templates()
        .await
        .ok()
        .and_then(|rows| rows.into_iter().find(|r| r.name == name && r.root == root));
    println!("{}", revert_message(name, &root, row.as_ref()));
    Ok(())
}

/// "NAME: back to the root changed 3 min ago (root-…); …" for `template revert`.
fn revert_message(name: &str, root: &str, row: Option<&bulkhead_api::TemplateInfo>) -> String {
    let id = std::path::Path::new(root)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| root.to_owned());
    let when = match row {
        Some(r) if r.changed_at > 0 => format!("changed {}", ago(r.changed_at)),
        Some(r) if r.built_at > 0 => format!("built {}", ago(r.built_at)),
        _ => String::new(),
    };
    let what = if when.is_empty() {
        id
    } else {
        format!("{when} ({id})")
    };
    format!(
        "{name}: back to the root {what}; domains started from now on use it (running ones keep theirs; `bulkhead template revert {name}` again undoes this)"
    )
}

async fn template_remove(proxy: &Domaind1Proxy<'_>, name: &str) -> Result<(), Failure> {
    let props = proxy.get_properties(name).await?;
    if props.get("class").map(String::as_str) != Some("template") {
        return Err(Failure::new(
            Code::InvalidInput,
            format!("'{name}' is not a template (bulkhead rm removes other domains)"),
        ));
    }
    proxy.remove(name).await?;
    Ok(())
}

async fn template_build(proxy: &Domaind1Proxy<'_>, name: &str) -> Result<(), Failure> {
    let (reader, writer) = nix::unistd::pipe()
        .map_err(|e| Failure::new(Code::Failure, format!("cannot create a pipe: {e}")))?;
    let progress = Progress::new(&format!("template {name}"));
    let show = std::io::stderr().is_terminal();
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    // The pipe is read on a thread: the lines are few and a blocking read is simplest.
    let reader_thread = std::thread::spawn(move || {
        for line in std::io::BufReader::new(std::fs::File::from(reader)).lines() {
            match line {
                Ok(line) => {
                    if lines_tx.send(line).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    let call = proxy.build_template(name, Fd::from(writer));
    tokio::pin!(call);
    let result = loop {
        tokio::select! {
            result = &mut call => break result,
            Some(line) = lines_rx.recv() => progress.line(&line),
        }
    };
    while let Ok(line) = lines_rx.try_recv() {
        progress.line(&line);
    }
    drop(reader_thread);
    match result {
        Ok(root) => {
            progress.finish(&format!("ready: {root}"));
            if !show {
                println!("{root}");
            }
            Ok(())
        }
        Err(e) => {
            progress.abandon();
            Err(e.into())
        }
    }
}
