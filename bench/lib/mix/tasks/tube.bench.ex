defmodule Mix.Tasks.Tube.Bench do
  @shortdoc "Benchmarks tubes against Erlang distribution, Unix sockets and UDP"
  @moduledoc """
  Starts a second BEAM OS process (a `:peer` node over Erlang
  distribution) and measures, in one run, side by side:

    * one-way throughput for 64, 1500 and 4096-byte packets (sender as
      fast as it can, receiver counting in a fixed window, drops reported)
    * 64-byte ping-pong round trip, p50 and p99
    * for tubes, Erlang distribution (`Pid ! Binary`), `gen_tcp` over a
      Unix domain socket (`{packet, 2}`, 4 MiB buffers) and `gen_udp` on
      loopback;

  then 1, 10, 100 and 1000 tubes open at once: aggregate throughput, open
  handshake time, idle CPU, shared and BEAM memory per tube.

  Throughput figures are the median of `--rounds` interleaved rounds
  (default 5; 1 with `--quick`): each round runs every transport at every
  size, then every scale level, so the rounds of one figure are spread over
  the whole run rather than taken back to back. Each round also records the
  machine's own references, measured with no tube code (`ring-bench
  --machine`: each CPU's speed, its copy rate, the cache-line round trip
  between the CPUs), and the report shows how much they moved: on a shared
  virtual machine they move by 2x within seconds, and every transport's
  figures with them.

  Prints the tables, writes `bench/results/tube-<date>.json` and
  `bench/results/tube-<date>.png` (with gnuplot), and copies both to
  `tube-latest.*`.

      mix tube.bench            # about 4 minutes
      mix tube.bench --quick    # about 1 minute
      mix tube.bench --out DIR  # results elsewhere
      mix tube.bench --only tube,dist --no-scale   # a subset, for profiling
      mix tube.bench --on-heap  # receivers with the default on-heap message queue
      mix tube.bench --levels 100,1000 --sizes 64 --window 3000   # narrower, longer

  `--levels` sets the tube counts of the scale part, `--sizes` the packet
  sizes of the transport part, `--window` the measuring window (ms) of both;
  `--no-transports` skips the transport part; `--handshakes N` sets how many
  open/close cycles give the one-tube handshake figures (default 20).

      mix tube.bench --rx-modes --rounds 5   # the receive-mode table alone

  `--rx-modes` measures, instead of the tables above, one tube received in
  its default mode, `{active, true}` and fixed credits side by side, in
  `--rounds` interleaved rounds (default 3), and prints medians with the
  smallest and largest figure of each cell and the default's share of the
  best credit mode (see `Tube.Bench.RxModes`).

  Every receiving process (for every transport alike) runs with
  `message_queue_data: :off_heap` unless `--on-heap` is given: with the
  default on-heap queue, a sender on another scheduler and the receiver
  fight over the queue lock, which costs tubes at 64 bytes about half of
  their rate on a 2-core machine.

  The run uses its own Xenstore daemon socket (a private `XENSTORED_PATH`)
  and stops that daemon at the end. epmd is started if it is not running.
  """
  use Mix.Task

  alias Tube.Bench.{Cluster, Report, RxModes, Suite}

  @impl true
  def run(args) do
    {opts, _, _} = OptionParser.parse(args, strict: [quick: :boolean, out: :string, only: :string, scale: :boolean, on_heap: :boolean, levels: :string, sizes: :string, window: :integer, transports: :boolean, handshakes: :integer, rx_modes: :boolean, rounds: :integer])
    Mix.Task.run("compile")
    Mix.Task.run("loadpaths")
    quick? = Keyword.get(opts, :quick, false)
    out = Keyword.get(opts, :out, Path.join(Path.dirname(Mix.Project.project_file()), "results"))
    settings = Suite.settings(quick?) |> narrow(opts)
    log = fn line -> IO.puts(:stderr, "  " <> line) end

    IO.puts(:stderr, "tube bench#{if quick?, do: " (quick)", else: ""}: starting two nodes")
    cluster = Cluster.start(settings.off_heap)

    if opts[:rx_modes] do
      settings = Map.put(settings, :rx_rounds, Keyword.get(opts, :rounds, 3))

      res =
        try do
          RxModes.run(cluster, settings, log)
        after
          Cluster.stop(cluster)
        end

      write_rx_modes(res, settings, out)
    else
      res =
        try do
          Suite.run(cluster, settings, log)
        after
          Cluster.stop(cluster)
        end

      write(res, settings, quick?, out)
    end
  end

  defp write_rx_modes(res, settings, out) do
    stamp = Calendar.strftime(DateTime.utc_now(), "%Y%m%d-%H%M%S")
    machine = machine()
    IO.puts(RxModes.table(res))
    IO.puts("\nmachine: #{machine.cpu}, #{machine.cores} cores, Linux #{machine.kernel}, OTP #{machine.otp}")
    File.mkdir_p!(out)
    json = Path.join(out, "rx-modes-#{stamp}.json")
    doc = %{command: "mix tube.bench --rx-modes", date: stamp, machine: machine, settings: settings, results: res}
    File.write!(json, Report.json(doc) <> "\n")
    IO.puts("wrote #{json}")
  end

  # --only tube,dist limits the transports; --no-scale skips the scale part.
  defp narrow(settings, opts) do
    settings = Map.put(settings, :scale, Keyword.get(opts, :scale, true))
    settings = Map.put(settings, :off_heap, not Keyword.get(opts, :on_heap, false))

    settings =
      case Keyword.get(opts, :only) do
        nil -> settings
        list -> %{settings | transports: list |> String.split(",") |> Enum.map(&String.to_existing_atom/1)}
      end

    settings = if opts[:transports] == false, do: %{settings | transports: []}, else: settings
    settings = if l = opts[:levels], do: %{settings | levels: ints(l)}, else: settings
    settings = if z = opts[:sizes], do: %{settings | sizes: ints(z)}, else: settings
    settings = if h = opts[:handshakes], do: %{settings | handshakes: h}, else: settings
    settings = if r = opts[:rounds], do: %{settings | rounds: r}, else: settings

    case opts[:window] do
      nil -> settings
      ms -> %{settings | window_ms: ms, scale_window_ms: ms}
    end
  end

  defp ints(list), do: list |> String.split(",") |> Enum.map(&String.to_integer/1)

  defp write(res, settings, quick?, out) do
    stamp = Calendar.strftime(DateTime.utc_now(), "%Y%m%d-%H%M%S")
    machine = machine()
    command = "mix tube.bench" <> if(quick?, do: " --quick", else: "")
    doc = %{command: command, date: stamp, machine: machine, settings: settings, results: res}
    IO.puts(Report.table(res))
    IO.puts("\nmachine: #{machine.cpu}, #{machine.cores} cores, Linux #{machine.kernel}, OTP #{machine.otp}")

    File.mkdir_p!(out)
    json = Path.join(out, "tube-#{stamp}.json")
    File.write!(json, Report.json(doc) <> "\n")
    File.cp!(json, Path.join(out, "tube-latest.json"))
    IO.puts("wrote #{json}")

    png = Path.join(out, "tube-#{stamp}.png")
    title = "tube bench: #{command}, #{machine.cores} cores #{machine.cpu}, #{stamp} UTC"

    case Report.chart(res, png, title) do
      :ok ->
        File.cp!(png, Path.join(out, "tube-latest.png"))
        IO.puts("wrote #{png}")

      {:error, why} ->
        IO.puts(:stderr, "no chart: #{why}")
    end
  end

  defp machine do
    cpu =
      case File.read("/proc/cpuinfo") do
        {:ok, s} ->
          case Regex.run(~r/^model name\s*:\s*(.+)$/m, s) do
            [_, m] -> String.trim(m)
            _ -> "unknown CPU"
          end

        _ ->
          "unknown CPU"
      end

    {kernel, 0} = System.cmd("uname", ["-r"])

    %{
      cpu: cpu,
      cores: System.schedulers_online(),
      kernel: String.trim(kernel),
      otp: List.to_string(:erlang.system_info(:otp_release)),
      elixir: System.version()
    }
  end
end
