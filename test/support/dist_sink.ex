defmodule DistTest.Sink do
  @moduledoc false
  # A reliable-tube receiver that runs inside a peer node (driven through
  # :peer.call, which carries terms but not messages): it accepts one tube,
  # records every message it gets (size and digest, and whether sequence
  # numbers stayed in order) and how the tube ended.

  @doc "Starts the sink: accepts one reliable tube with `active` as its first mode."
  def start(active \\ true), do: start_with(%{active: active})

  @doc "Starts the sink with accept options `opts` (default: reliable, active, 60 s)."
  def start_with(opts) do
    parent = self()
    opts = Map.merge(%{delivery: :reliable, active: true, timeout: 60_000}, opts)

    pid =
      spawn(fn ->
        {:ok, t} = :tube.accept(opts)
        send(parent, {:sink_ready, self()})
        loop(%{tube: t, n: 0, bytes: 0, digests: [], next_seq: 0, in_order: true, closed: nil})
      end)

    Process.register(pid, :dist_sink)
    :ok
  end

  @doc "Opens a reliable tube to `domid` in a new process that sends one message and then waits forever."
  def spawn_writer(domid, tid) do
    spawn(fn ->
      {:ok, t} = :tube.open(domid, tid, %{delivery: :reliable})
      :erlang.port_command(t, "x")
      Process.sleep(:infinity)
    end)

    :ok
  end

  @doc "Waits until the sink holds a tube."
  def wait_ready(timeout \\ 60_000) do
    receive do
      {:sink_ready, _} -> :ok
    after
      timeout -> {:error, :timeout}
    end
  end

  @doc "Sets the sink tube's active mode."
  def setopts(opts), do: call({:setopts, opts})

  @doc "What the sink got so far."
  def result, do: call(:result)

  @doc "The sink tube's info/1."
  def info, do: call(:info)

  @doc "The sink's OS-visible owner pid (to check it is alive)."
  def stop, do: call(:stop)

  defp call(req) do
    ref = make_ref()
    send(:dist_sink, {req, self(), ref})

    receive do
      {^ref, reply} -> reply
    after
      120_000 -> {:error, :timeout}
    end
  end

  defp loop(st = %{tube: t}) do
    receive do
      {^t, {:data, bin}} -> loop(record(bin, st))
      {:tube_passive, ^t} -> loop(st)
      {:tube_closed, ^t, reason} -> loop(%{st | closed: reason})
      {{:setopts, opts}, from, ref} -> send(from, {ref, :tube.setopts(t, opts)}) && loop(st)
      {:info, from, ref} -> send(from, {ref, :tube.info(t)}) && loop(st)
      {:result, from, ref} -> send(from, {ref, summary(st)}) && loop(st)
      {:stop, from, ref} -> send(from, {ref, :ok})
    end
  end

  # Messages that start with "SEQ" carry a sequence number; the others are
  # kept by digest, in arrival order.
  defp record(<<"SEQ", seq::32, _::binary>> = bin, st) do
    %{st | n: st.n + 1, bytes: st.bytes + byte_size(bin), next_seq: seq + 1,
           in_order: st.in_order and seq == st.next_seq}
  end

  defp record(bin, st) do
    %{st | n: st.n + 1, bytes: st.bytes + byte_size(bin),
           digests: [{byte_size(bin), :erlang.md5(bin)} | st.digests]}
  end

  defp summary(st) do
    %{n: st.n, bytes: st.bytes, in_order: st.in_order, next_seq: st.next_seq,
      digests: Enum.reverse(st.digests), closed: st.closed}
  end
end
