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

  @doc "Polls `fun` every 10 ms until it is truthy; flunks after `tries` polls."
  def wait_until(fun, tries \\ 1_000) do
    cond do
      fun.() -> :ok
      tries == 0 -> flunk("condition not reached")
      true -> Process.sleep(10) && wait_until(fun, tries - 1)
    end
  end
end
