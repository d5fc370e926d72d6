//! A tiny Xenstore command-line client, for poking at a daemon by hand.
//!
//! `cargo run -p tube_xs --example xs -- [--socket PATH] COMMAND ...` with COMMAND one of
//! `read PATH`, `write PATH VALUE`, `mkdir PATH`, `rm PATH`, `ls PATH`, `perms PATH`, `setperms PATH PERMS`,
//! `watch PATH COUNT` (prints COUNT events), `introduce [DOMID]`.

use std::path::PathBuf;
use std::process::ExitCode;

use tube_xs::client::{Client, Error};
use tube_xs::perms::PermList;

fn run(xs: &Client, args: &[String]) -> Result<(), Error> {
    let arg = |i: usize| {
        args.get(i)
            .map(String::as_str)
            .ok_or(Error::Protocol(format!("missing argument {i}")))
    };
    match arg(0)? {
        "read" => println!("{}", String::from_utf8_lossy(&xs.read(0, arg(1)?)?)),
        "write" => xs.write(0, arg(1)?, arg(2)?.as_bytes())?,
        "mkdir" => xs.mkdir(0, arg(1)?)?,
        "rm" => xs.rm(0, arg(1)?)?,
        "ls" => xs
            .directory(0, arg(1)?)?
            .iter()
            .for_each(|n| println!("{n}")),
        "perms" => println!("{}", xs.get_perms(0, arg(1)?)?),
        "setperms" => xs.set_perms(0, arg(1)?, &PermList::parse_str(arg(2)?)?)?,
        "watch" => {
            let count: usize = arg(2)?
                .parse()
                .map_err(|_| Error::Protocol("COUNT is not a number".into()))?;
            let events = xs.events();
            xs.watch(arg(1)?, "xs-example")?;
            for ev in events.iter().take(count) {
                println!("{} {}", ev.path, ev.token);
            }
        }
        "introduce" => {
            let domid = args
                .get(1)
                .map(|d| d.parse().map_err(|_| Error::Protocol("bad domid".into())));
            println!("{}", xs.introduce_self(domid.transpose()?)?);
        }
        other => return Err(Error::Protocol(format!("unknown command {other}"))),
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let socket = match args.first().map(String::as_str) {
        Some("--socket") if args.len() > 1 => {
            let p = PathBuf::from(args.remove(1));
            args.remove(0);
            p
        }
        _ => tube_xs::client::default_socket_path(),
    };
    let result = Client::connect(&socket).and_then(|xs| run(&xs, &args));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xs: {e}");
            ExitCode::FAILURE
        }
    }
}
