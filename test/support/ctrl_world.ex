defmodule TubeTest.CtrlWorld do
  @moduledoc false
  # A private Xenstore for one control-plane test: its own socket directory
  # and daemon (with quotas if asked), and peer nodes bound to it, so that
  # stopping or killing that daemon touches nothing else. `cleanup/1` stops
  # the peers and the daemon and removes the directory.

  alias TubeTest.PeerNode

  def new(daemon_args \\ nil) do
    dir = Path.join(System.tmp_dir!(), "tube-ctrl-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    File.chmod!(dir, 0o700)
    w = %{dir: dir, socket: Path.join(dir, "xs.sock")}
    # "DB" in the arguments stands for a database file in the directory.
    if daemon_args, do: start_daemon(w, Enum.map(daemon_args, &if(&1 == "DB", do: db(w), else: &1)))
    w
  end

  def db(w), do: Path.join(w.dir, "xs.db")

  @doc "Starts tubestored on the world's socket, with extra arguments (quotas)."
  def start_daemon(w, args \\ []) do
    exe = Path.join(:tube_nif.lib_dir(), "tubestored")
    {_, 0} = System.cmd(exe, ["--daemon", "--quiet", "--socket", w.socket, "--pidfile", w.socket <> ".pid"] ++ args)
    :ok
  end

  @doc """
  A peer node using the world's daemon; env is set before the application
  starts. `ulimit_n` runs it under `ulimit -n`. Returns {peer, domid, os_pid}.
  """
  def peer(w, env \\ [], ulimit_n \\ nil) do
    paths = Enum.flat_map(:code.get_path(), fn p -> [~c"-pa", p] end)
    opts = with_ulimit_n(%{connection: :standard_io, args: paths, wait_boot: 30_000}, ulimit_n)
    PeerNode.start_tube(opts, [xenstore_path: String.to_charlist(w.socket)] ++ env)
  end

  @doc """
  `:peer` start options that run the node under `ulimit -n n` (through a
  shell that then execs erl); unchanged for `nil`.
  """
  def with_ulimit_n(opts, nil), do: opts

  def with_ulimit_n(opts, n) do
    erl = System.find_executable("erl") |> String.to_charlist()
    script = ~c"ulimit -n #{n} && exec \"$0\" \"$@\""
    Map.put(opts, :exec, {~c"/bin/sh", [~c"-c", script, erl]})
  end

  def set_env(peer, k, v), do: :ok = PeerNode.call(peer, :application, :set_env, [:tube, k, v])

  def daemon_pid(w) do
    case File.read(w.socket <> ".pid") do
      {:ok, pid} -> String.trim(pid)
      _ -> nil
    end
  end

  @doc "Sends a signal (\"STOP\", \"CONT\", \"KILL\") to the world's daemon."
  def signal_daemon(w, sig) do
    pid = daemon_pid(w)
    {_, 0} = System.cmd("kill", ["-" <> sig, pid])
    if sig == "KILL", do: wait_gone(pid)
    :ok
  end

  def signal(os_pid, sig), do: {_, 0} = System.cmd("kill", ["-" <> sig, Integer.to_string(os_pid)])

  defp wait_gone(pid, tries \\ 1000) do
    case File.read("/proc/#{pid}/stat") do
      {:ok, stat} ->
        if stat =~ ") Z " or tries == 0, do: :ok, else: (Process.sleep(10); wait_gone(pid, tries - 1))

      _ ->
        :ok
    end
  end

  @doc "xenstore-* against the world's daemon: {status, output}."
  def xs(w, args) do
    {out, status} =
      System.cmd("timeout", ["10" | args], stderr_to_stdout: true, env: [{"XENSTORED_PATH", w.socket}])

    {status, out}
  end

  def exists?(w, path), do: elem(xs(w, ["xenstore-exists", path]), 0) == 0

  @doc "The children of `path` ([] if it has none or does not exist)."
  def children(w, path) do
    case xs(w, ["xenstore-list", path]) do
      {0, out} -> String.split(out, "\n", trim: true)
      _ -> []
    end
  end

  def cleanup(w, peers) do
    for p <- peers, do: PeerNode.stop(p)

    case daemon_pid(w) do
      nil -> :ok
      pid -> System.cmd("kill", ["-CONT", pid]) && System.cmd("kill", ["-TERM", pid])
    end

    File.rm_rf(w.dir)
  end
end
