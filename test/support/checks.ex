defmodule TubeTest.Checks do
  @moduledoc false
  # Helpers shared by the suites: Xen's command-line tools, bounded waits.

  import ExUnit.Assertions, only: [flunk: 1]

  @doc "Runs a xenstore-* tool (bounded by timeout(1)); {exit_status, output}."
  def xs(args) do
    {out, status} = System.cmd("timeout", ["10" | args], stderr_to_stdout: true)
    {status, out}
  end

  @doc "Whether xenstore-exists finds `path`."
  def exists?(path), do: elem(xs(["xenstore-exists", path]), 0) == 0

  @doc "The OS pid of the daemon listening on `socket`, from the pidfile beside it; nil if none."
  def daemon_pid(socket) do
    case File.read(socket <> ".pid") do
      {:ok, pid} -> String.trim(pid)
      _ -> nil
    end
  end

  @doc "Sends `signal` (\"TERM\", \"KILL\") to the daemon on `socket`, if it has a pidfile."
  def signal_daemon(socket, signal \\ "TERM") do
    case daemon_pid(socket) do
      nil -> :ok
      pid -> System.cmd("kill", ["-" <> signal, pid])
    end
  end

  @doc """
  The pid of this node's control-plane process (registered as
  tube_registry); nil if it does not run. Tests compare it before and after
  to see that nothing crashed.
  """
  def control_plane, do: Process.whereis(:tube_registry)

  @doc "Polls `fun` every 10 ms until it is truthy; flunks after `tries` polls."
  def wait_until(fun, tries \\ 1_000) do
    cond do
      fun.() -> :ok
      tries == 0 -> flunk("condition not reached")
      true -> Process.sleep(10) && wait_until(fun, tries - 1)
    end
  end

  @doc "The integer in OS environment variable `name` (a soak's count), else `default`."
  def env_int(name, default) do
    case System.get_env(name) do
      nil -> default
      v -> String.to_integer(v)
    end
  end
end
