defmodule TubeTest.Remote do
  @moduledoc false
  # Tube owners driven from a test: used inside peer nodes (through
  # :peer.call, which carries terms but no messages) and on the test node.
  # Each owner process holds one tube; it echoes or collects packets and
  # records how the tube ended.

  @doc """
  Accepts one tube in a new owner process. Returns {:ok, name} or {:error, reason}.
  `opts` go to accept/1 (besides the timeout); `exit_on_close: true` makes the
  owner exit once its tube closes.
  """
  def accept(mode, timeout, opts \\ %{}) do
    {exit_on_close, opts} = Map.pop(opts, :exit_on_close, false)
    start_owner(mode, fn -> :tube.accept(Map.put(opts, :timeout, timeout)) end, exit_on_close)
  end

  @doc "Opens a tube in a new owner process; `opts` go to open/3 besides the timeout."
  def open(domid, tid, mode, timeout, opts \\ %{}),
    do: start_owner(mode, fn -> :tube.open(domid, tid, Map.put(opts, :timeout, timeout)) end, false)

  @doc """
  Keeps one accept() pending at all times in this node: each accepted tube
  gets its own owner in `mode`, which exits when the tube closes. Returns
  :ok; `served/0` tells how many were accepted and how many are open.
  """
  def serve(mode) do
    case Process.whereis(:tube_serve) do
      nil ->
        pid = spawn(fn -> serve_loop(mode, 0, MapSet.new()) end)
        Process.register(pid, :tube_serve)
        :ok

      _ ->
        :ok
    end
  end

  @doc "Stops serve/1, including its pending accept."
  def stop_serve do
    case Process.whereis(:tube_serve) do
      nil ->
        :ok

      pid ->
        ref = Process.monitor(pid)
        Kernel.send(pid, :stop)

        receive do
          {:DOWN, ^ref, _, _, _} -> :ok
        end
    end
  end

  @doc "{accepted, open} of serve/1."
  def served do
    ref = make_ref()
    Kernel.send(:tube_serve, {:served, self(), ref})

    receive do
      {^ref, reply} -> reply
    after
      15_000 -> {:error, :timeout}
    end
  end

  defp serve_loop(mode, accepted, owners) do
    server = self()

    pending = spawn(fn ->
      case :tube.accept() do
        {:ok, port} ->
          Kernel.send(server, {:accepted, self()})
          loop(owner_state(port, mode, true))

        _ ->
          Kernel.send(server, {:accept_failed, self()})
      end
    end)

    serve_wait(mode, accepted, owners, pending)
  end

  defp serve_wait(mode, accepted, owners, pending) do
    receive do
      {:accepted, pid} ->
        Process.monitor(pid)
        serve_loop(mode, accepted + 1, MapSet.put(owners, pid))

      {:accept_failed, _} ->
        Process.sleep(50)
        serve_loop(mode, accepted, owners)

      {:DOWN, _, :process, pid, _} ->
        serve_wait(mode, accepted, MapSet.delete(owners, pid), pending)

      {:served, from, ref} ->
        Kernel.send(from, {ref, {accepted, MapSet.size(owners)}})
        serve_wait(mode, accepted, owners, pending)

      :stop ->
        Process.exit(pending, :kill)
    end
  end

  @doc "Sends each packet in `packets` on the owner's tube."
  def send_packets(name, packets), do: call(name, {:send, packets})

  @doc "Sends `count` packets of `size` bytes numbered from 0 (4-byte sequence number first)."
  def send_seq(name, count, size), do: call(name, {:send_seq, count, size})

  @doc "Sends `count` packets of `size` bytes numbered from `first`."
  def send_seq(name, first, count, size), do: call(name, {:send_seq, first, count, size})

  @doc "What the owner saw: received packets (in order), closed reason, info."
  def stats(name), do: call(name, :stats)

  @doc "Closes the owner's tube with :tube.close/1."
  def close(name), do: call(name, :close)

  @doc "The owner's tube port."
  def port(name), do: call(name, :port)

  @doc "setopts/2 on the owner's tube, from the owner."
  def setopts(name, opts), do: call(name, {:setopts, opts})

  @doc "Waits until the owner has received `n` packets or the tube closed."
  def wait_received(name, n, timeout \\ 10_000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    wait_loop(name, n, deadline)
  end

  defp wait_loop(name, n, deadline) do
    s = stats(name)

    cond do
      s.count >= n or s.closed != nil -> s
      System.monotonic_time(:millisecond) > deadline -> s
      true -> Process.sleep(5) && wait_loop(name, n, deadline)
    end
  end

  defp call(name, msg) do
    ref = make_ref()
    Kernel.send(name, {msg, self(), ref})

    receive do
      {^ref, reply} -> reply
    after
      15_000 -> {:error, :owner_timeout}
    end
  end

  defp start_owner(mode, fun, exit_on_close) do
    parent = self()
    ref = make_ref()
    name = :"tube_owner_#{System.unique_integer([:positive])}"

    pid =
      spawn(fn ->
        Process.register(self(), name)

        case fun.() do
          {:ok, port} ->
            send(parent, {ref, {:ok, name}})
            loop(owner_state(port, mode, exit_on_close))

          error ->
            send(parent, {ref, error})
        end
      end)

    mon = Process.monitor(pid)

    receive do
      {^ref, reply} ->
        Process.demonitor(mon, [:flush])
        reply

      {:DOWN, ^mon, _, _, reason} ->
        {:error, {:owner_died, reason}}
    end
  end

  # Keeps the first packets only, so floods do not eat the node's memory.
  # Mode :echo sends every packet back, :collect keeps them, :count only
  # counts, :seq counts and checks the 4-byte sequence numbers of send_seq/3
  # over every packet: `disorder` counts packets whose number is not above
  # the one before (a duplicate or a reordering), `last_seq` is the last.
  @keep 10_000

  defp owner_state(port, mode, exit_on_close) do
    %{port: port, mode: mode, packets: [], count: 0, closed: nil, info: nil, exit_on_close: exit_on_close,
      last_seq: -1, disorder: 0}
  end

  defp check_seq(st = %{mode: :seq}, <<s::32, _::binary>>) do
    %{st | last_seq: s, disorder: if(s > st.last_seq, do: st.disorder, else: st.disorder + 1)}
  end

  defp check_seq(st = %{mode: :seq}, _short), do: %{st | disorder: st.disorder + 1}
  defp check_seq(st, _data), do: st

  defp loop(st) do
    port = st.port

    receive do
      {^port, {:data, data}} ->
        if st.mode == :echo, do: safe_command(port, data)
        keep = st.mode not in [:count, :seq] and st.count < @keep
        packets = if keep, do: [data | st.packets], else: st.packets
        loop(check_seq(%{st | packets: packets, count: st.count + 1}, data))

      {:tube_closed, ^port, reason} ->
        if st.exit_on_close, do: exit(:normal)
        loop(%{st | closed: reason})

      {{:send, packets}, from, ref} ->
        res = Enum.map(packets, fn p -> safe_command(port, p) end)
        send(from, {ref, res})
        loop(st)

      {{:send_seq, count, size}, from, ref} ->
        pad = :binary.copy(<<0xA5>>, max(size - 4, 0))
        for i <- 0..(count - 1)//1, do: safe_command(port, <<i::32, pad::binary>>)
        send(from, {ref, :ok})
        loop(st)

      {{:send_seq, first, count, size}, from, ref} ->
        pad = :binary.copy(<<0xA5>>, max(size - 4, 0))
        for i <- first..(first + count - 1)//1, do: safe_command(port, <<i::32, pad::binary>>)
        send(from, {ref, :ok})
        loop(st)

      {:stats, from, ref} ->
        info =
          case :tube.info(port) do
            {:ok, i} -> i
            _ -> st.info
          end

        send(from, {ref, %{packets: Enum.reverse(st.packets), count: st.count, closed: st.closed, info: info,
                           last_seq: st.last_seq, disorder: st.disorder}})
        loop(%{st | info: info})

      {{:setopts, opts}, from, ref} ->
        send(from, {ref, :tube.setopts(port, opts)})
        loop(st)

      {:close, from, ref} ->
        send(from, {ref, :tube.close(port)})
        loop(st)

      {:port, from, ref} ->
        send(from, {ref, port})
        loop(st)
    end
  end

  defp safe_command(port, data) do
    try do
      Port.command(port, data)
    rescue
      ArgumentError -> :badarg
    end
  end
end
