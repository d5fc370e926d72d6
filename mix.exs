defmodule Tube.MixProject do
  use Mix.Project

  def project do
    [
      app: :tube,
      version: "0.1.0",
      elixir: "~> 1.14",
      erlc_paths: ["src"],
      elixirc_paths: elixirc_paths(Mix.env()),
      erlc_options: [:debug_info, :warnings_as_errors],
      compilers: [:tube_native] ++ Mix.compilers(),
      start_permanent: Mix.env() == :prod,
      aliases: [test: "test --no-start"],
      deps: []
    ]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]

  def application do
    [
      mod: {:tube_app, []},
      extra_applications: [:logger],
      env: [
        # Domain id of this node: an integer in 1..32751, or :auto.
        domid: :auto,
        # Xenstore socket: :default is XENSTORED_PATH, else tubestored's
        # per-user path.
        xenstore_path: :default,
        # Start tubestored when nothing answers on the socket.
        embedded_daemon: true,
        # Database for an embedded daemon started by this node (nil: none).
        xenstore_db: :undefined,
        # Default open/3 timeout in milliseconds.
        open_timeout: 5000,
        # Default polling window of a tube in microseconds (see
        # tube:setopts/2); 0 never polls.
        busy_poll: 50
      ]
    ]
  end
end

defmodule Mix.Tasks.Compile.TubeNative do
  @moduledoc false
  # Builds the native crates with cargo and copies what the application
  # loads at run time into priv/: the NIF + driver library and the daemon.
  use Mix.Task.Compiler

  @impl true
  def run(_args) do
    cargo = System.find_executable("cargo") || Path.expand("~/.cargo/bin/cargo")

    {_, status} =
      System.cmd(cargo, ["build", "--release", "-p", "tube_nif", "-p", "tubestored"],
        into: IO.stream(:stdio, :line),
        stderr_to_stdout: true
      )

    if status != 0, do: Mix.raise("cargo build failed with status #{status}")

    target = System.get_env("CARGO_TARGET_DIR") || "target"
    File.mkdir_p!("priv")
    copy!(Path.join([target, "release", "libtube_nif.so"]), "priv/tube_nif.so")
    copy!(Path.join([target, "release", "tubestored"]), "priv/tubestored")
    {:ok, []}
  end

  # Replace by rename so a running node keeps its mapping of the old file.
  defp copy!(from, to) do
    tmp = to <> ".tmp"
    File.cp!(from, tmp)
    File.rename!(tmp, to)
  end
end
