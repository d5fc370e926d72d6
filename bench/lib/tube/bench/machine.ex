defmodule Tube.Bench.Machine do
  @moduledoc false
  # The machine's own references, recorded beside every round of a bench
  # run: each CPU's speed on register-only work, its rate of 64-byte copies
  # through a 256 KiB buffer, and the cache-line round trip between CPU 0
  # and CPU 1 (`ring-bench --machine`, which runs no tube code). On a shared
  # virtual machine these move by 2x within seconds while the guest is
  # otherwise idle, and every transport's figure moves with them; the
  # references let a reader tell a change of ours from a change of the host.

  @keys ~w(cpu0_mops cpu1_mops copy0_mops copy1_mops line_rtt_ns)

  @doc "The references now, or nil when `ring-bench` is not built."
  def reference do
    case binary() do
      nil ->
        nil

      bin ->
        case System.cmd(bin, ["--machine"], stderr_to_stdout: true) do
          {out, 0} -> parse(out)
          _ -> nil
        end
    end
  end

  @doc "The built `ring-bench` (scripts/bench.sh builds it), or nil."
  def binary do
    root = Path.expand("..", Path.dirname(Mix.Project.project_file()))
    path = Path.join([root, "target", "release", "ring-bench"])
    if File.exists?(path), do: path
  end

  # One line of flat JSON with numbers only.
  defp parse(out) do
    pairs = for [_, k, v] <- Regex.scan(~r/"(\w+)":\s*([0-9.]+)/, out), k in @keys, into: %{}, do: {String.to_atom(k), String.to_float(v)}
    if map_size(pairs) == length(@keys), do: pairs
  end

  @doc "Each reference's median, min and max over the rounds (nil rounds skipped)."
  def summary(refs) do
    refs = Enum.reject(refs, &is_nil/1)

    if refs == [] do
      nil
    else
      for k <- @keys, into: %{} do
        vs = Enum.map(refs, &Map.fetch!(&1, String.to_atom(k)))
        {String.to_atom(k), %{median: Tube.Bench.Measure.middle_by(vs, & &1), min: Enum.min(vs), max: Enum.max(vs)}}
      end
    end
  end
end
