//! `dom0-ui`: the desktop session (default), or `dom0-ui open-in-dvm FILE`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bulkhead_gui_host::{Rules, TitleMode};
use clap::{Parser, Subcommand};
use dom0_ui::backend::{Backend, UiEvent};
use dom0_ui::ui::{css, Desktop};
use gtk4::prelude::*;
use gtk4::{gdk, glib};

#[derive(Parser)]
#[command(
    version,
    about = "Bulkhead's dom0 desktop: guest windows, secure clipboard, ask dialog, notices"
)]
struct Cli {
    /// D-Bus address of domaind's bus (default: $BULKHEAD_BUS_ADDRESS, else the system bus).
    #[arg(long, global = true)]
    bus_address: Option<String>,
    /// Seconds the ask dialog waits for an answer before it denies.
    #[arg(long, default_value_t = 55)]
    ask_timeout: u64,
    /// Most bytes the dom0 clipboard takes from a domain.
    #[arg(long, default_value_t = dom0_ui::clipboard::DEFAULT_MAX_BYTES)]
    clipboard_max: usize,
    /// Allow UTF-8 window titles (control, bidi and zero-width characters are still
    /// replaced); the default is printable ASCII, as in Qubes.
    #[arg(long)]
    utf8_titles: bool,
    /// Development: show the windows of a gui-agent socket directly, without domaind, as
    /// DOMAIN:LABEL:SOCKET (repeatable).
    #[arg(long, value_name = "DOMAIN:LABEL:SOCKET")]
    attach: Vec<String>,
    /// Rewrite the user's application menu of the domains at least every SECONDS (also
    /// when a domain starts or stops); 0: never (then `bulkhead appmenus --sync` does it).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    menu_sync: u64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Open FILE in a new disposable; an edited copy replaces it when the application exits.
    OpenInDvm {
        /// The file.
        file: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    bulkhead_logging::init("info");
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match cli.command {
        Some(Command::OpenInDvm { ref file }) => rt.block_on(open_in_dvm(&cli, file)),
        None => session(&cli, &rt),
    }
}

async fn open_in_dvm(cli: &Cli, file: &std::path::Path) -> anyhow::Result<()> {
    let conn = bulkhead_api::connect(cli.bus_address.as_deref())
        .await
        .context("connecting to domaind's bus")?;
    let proxy = bulkhead_api::Domaind1Proxy::new(&conn).await?;
    match dom0_ui::open_dvm::open_in_dvm(&proxy, file).await? {
        bulkhead_services::open::Opened::Unchanged => {
            eprintln!("{}: unchanged", file.display())
        }
        bulkhead_services::open::Opened::Replaced(n) => {
            eprintln!(
                "{}: replaced by the edited copy ({n} bytes)",
                file.display()
            )
        }
    }
    Ok(())
}

fn session(cli: &Cli, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    gtk4::init().context("starting GTK (is DISPLAY or WAYLAND_DISPLAY set?)")?;
    let provider = gtk4::CssProvider::new();
    provider.load_from_data(&css());
    let display = gdk::Display::default().context("no GDK display")?;
    gtk4::style_context_add_provider_for_display(
        &display,
        &provider,
        gtk4::STYLE_PROVIDER_PRIORITY_APPLICATION,
    );
    let mut rules = Rules {
        title_mode: if cli.utf8_titles {
            TitleMode::Utf8
        } else {
            TitleMode::Ascii
        },
        ..Rules::default()
    };
    // Keep guest windows on dom0's screen (the first monitor).
    if let Some(m) = display
        .monitors()
        .item(0)
        .and_then(|m| m.downcast::<gdk::Monitor>().ok())
    {
        let g = m.geometry();
        rules.screen_width = u32::try_from(g.width()).unwrap_or(1920).max(1);
        rules.screen_height = u32::try_from(g.height()).unwrap_or(1080).max(1);
    }
    let (ui_tx, ui_rx) = async_channel::unbounded::<UiEvent>();
    // dom0's keymap for the guests, read before the first GUI connection.
    dom0_ui::keymap::follow(ui_tx.clone());
    let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel();
    let desktop = std::rc::Rc::new(std::cell::RefCell::new(Desktop::new(
        cmd_tx,
        ui_tx.clone(),
        cli.clipboard_max,
    )));
    for a in &cli.attach {
        let mut parts = a.splitn(3, ':');
        let (Some(domain), Some(label), Some(socket)) = (parts.next(), parts.next(), parts.next())
        else {
            anyhow::bail!("--attach {a}: expected DOMAIN:LABEL:SOCKET");
        };
        let label: bulkhead_domain::Label = label
            .parse()
            .map_err(|e| anyhow::anyhow!("--attach {a}: {e}"))?;
        let (ui, rules, domain, socket) = (
            ui_tx.clone(),
            rules.clone(),
            domain.to_owned(),
            PathBuf::from(socket),
        );
        rt.spawn(async move {
            if let Err(e) =
                dom0_ui::backend::attach_socket(ui, rules, domain.clone(), label, socket).await
            {
                tracing::warn!(domain, error = %e, "--attach");
            }
        });
    }
    let bus = cli.bus_address.clone();
    let ask_timeout = Duration::from_secs(cli.ask_timeout.max(1));
    let menu_sync = (cli.menu_sync > 0).then(|| Duration::from_secs(cli.menu_sync));
    rt.spawn(async move {
        let mut cmd_rx = cmd_rx;
        loop {
            let res = async {
                let conn = bulkhead_api::connect(bus.as_deref()).await?;
                let backend = Backend::new(&conn, ui_tx.clone(), rules.clone(), menu_sync).await?;
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                // Forward UI commands to this backend (replaced when it restarts).
                let forward = async {
                    while let Some(c) = cmd_rx.recv().await {
                        if tx.send(c).is_err() {
                            break;
                        }
                    }
                };
                tokio::select! {
                    r = backend.run(conn, ask_timeout, rx) => r,
                    () = forward => Ok(()),
                }
            }
            .await;
            match res {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach domaind; trying again in 5 s");
                    let _ = ui_tx
                        .send(UiEvent::Notice(format!("Cannot reach domaind: {e}")))
                        .await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    });
    // The panel's manager and policy editor get their own connection (they live as long as
    // the session; zbus runs it on our runtime).
    let manager_conn = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(5),
            bulkhead_api::connect(cli.bus_address.as_deref()),
        )
        .await
    });
    let manager_conn = match manager_conn {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "no bus for the domain manager");
            None
        }
        Err(_) => None,
    };
    let x11 = desktop.borrow().x11();
    let _panel = dom0_ui::panel::show(manager_conn, x11.as_deref());
    if let Some(x) = x11.as_deref() {
        desktop.borrow_mut().reserve(dom0_ui::placement::Area {
            x: 0,
            y: x.screen.1 - dom0_ui::panel::HEIGHT,
            width: x.screen.0,
            height: dom0_ui::panel::HEIGHT,
        });
    }
    let main_loop = glib::MainLoop::new(None, false);
    {
        let desktop = desktop.clone();
        glib::spawn_future_local(async move {
            while let Ok(ev) = ui_rx.recv().await {
                desktop.borrow_mut().handle(ev);
            }
        });
    }
    tracing::info!("dom0-ui running");
    main_loop.run();
    Ok(())
}
