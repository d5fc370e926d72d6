defmodule TubeTest.CtrlOwner do
  @moduledoc false
  # Control-plane helpers run inside peer nodes (through :peer.call).

  @doc "One process opens a tube for each Tid and holds them all; {:ok, pid, results}."
  def open_many(domid, tids, timeout) do
    parent = self()
    ref = make_ref()

    pid =
      spawn(fn ->
        results = for tid <- tids, do: :tube.open(domid, tid, %{timeout: timeout})
        send(parent, {ref, results})
        hold(for {:ok, t} <- results, do: t)
      end)

    receive do
      {^ref, results} -> {:ok, pid, results}
    end
  end

  # Holds the tubes; on {:check, from, ref} pings each open one (the peer
  # echoes) and says how each ended: {working, closed_with_reason, broken}.
  defp hold(tubes) do
    receive do
      {:check, from, ref} ->
        send(from, {ref, Enum.reduce(tubes, {0, 0, 0}, &check_one/2)})
        hold(tubes)
    end
  end

  defp check_one(t, {w, c, b}) do
    receive do
      {:tube_closed, ^t, _reason} -> {w, c + 1, b}
    after
      0 ->
        try do
          Port.command(t, "ping")

          receive do
            {^t, {:data, "ping"}} -> {w + 1, c, b}
            {:tube_closed, ^t, _reason} -> {w, c + 1, b}
          after
            10_000 -> {w, c, b + 1}
          end
        rescue
          ArgumentError ->
            # Closed without telling its owner: only close/1 by another process does that.
            {w, c, b + 1}
        end
    end
  end

  @doc "How the tubes of an open_many/3 owner are: {working, closed_with_reason, broken}."
  def check(pid) do
    ref = make_ref()
    mon = Process.monitor(pid)
    send(pid, {:check, self(), ref})

    receive do
      {^ref, r} -> Process.demonitor(mon, [:flush]); r
      {:DOWN, ^mon, _, _, _} -> :gone
    end
  end

  @doc "Kills the owner process of open_many/3."
  def kill(pid), do: Process.exit(pid, :kill)

  @doc """
  Writes `count` values under the tip directory of domain `target`, on a
  connection of its own, as a peer retrying opens would: each write is a
  watch event queued for `target`. The nodes are removed at the end.
  """
  def scribble_tips(target, count) do
    {:ok, c} = :tube_xs.open(:tube_daemon.socket_path(), 0)
    me = :tube.domid()
    base = "/local/domain/#{target}/data/tip/#{me}"

    for i <- 1..count do
      :ok = :tube_xs.write(c, "#{base}/#{rem(i, 8)}/x#{rem(i, 4)}", "#{i}")
    end

    :ok = :tube_xs.rm(c, base)
    :tube_xs.close(c)
  end

  @doc """
  `n` reopens of Tid `tid` toward `domid`: each opens, closes the port at
  once (port_close/1, or the owner's exit on odd rounds) and opens again at
  once. Returns the results of the second opens that were not {:ok, _}.
  """
  def reopen_cycles(domid, tid, n) do
    for i <- 1..n, reduce: [] do
      bad ->
        first =
          if rem(i, 2) == 0 do
            {:ok, t} = :tube.open(domid, tid, %{timeout: 10_000})
            Port.close(t)
            :ok
          else
            parent = self()
            ref = make_ref()

            {pid, mon} =
              spawn_monitor(fn ->
                {:ok, _t} = :tube.open(domid, tid, %{timeout: 10_000})
                send(parent, {ref, :opened})
              end)

            receive do
              {^ref, :opened} -> :ok
            end

            receive do
              {:DOWN, ^mon, _, ^pid, _} -> :ok
            end
          end

        :ok = first

        case :tube.open(domid, tid, %{timeout: 10_000}) do
          {:ok, t} ->
            Port.close(t)
            bad

          other ->
            [{i, other} | bad]
        end
    end
  end

  @doc "A process opens tubes to `domid` until one fails and holds them; {opened, first_error}."
  def open_until_error(domid, timeout) do
    parent = self()
    ref = make_ref()

    spawn(fn ->
      send(parent, {ref, open_loop(domid, timeout, 0)})

      receive do
        :never -> :ok
      end
    end)

    receive do
      {^ref, result} -> result
    end
  end

  defp open_loop(domid, timeout, tid) do
    case :tube.open(domid, tid, %{timeout: timeout}) do
      {:ok, _t} -> open_loop(domid, timeout, tid + 1)
      error -> {tid, error}
    end
  end

  @doc "Runs m.f(a) bounded by `timeout`: {:answered, result}, {:exited, reason} or :no_answer."
  def call_with_timeout(m, f, a, timeout) do
    task = Task.async(fn -> apply(m, f, a) end)

    case Task.yield(task, timeout) || Task.shutdown(task, :brutal_kill) do
      {:ok, result} -> {:answered, result}
      {:exit, reason} -> {:exited, reason}
      nil -> :no_answer
    end
  end

  @doc "Opens Tid to the node named `node` in an owner process (Remote's); {:ok, owner_name}."
  def open_named(node, tid) do
    TubeTest.Remote.open(node, tid, :collect, 10_000)
  end

  @doc "tube:peername/1 of an owner's tube."
  def peername(owner), do: :tube.peername(TubeTest.Remote.port(owner))

  @doc "The name of the owner's port, as observer shows it."
  def port_name(owner), do: :erlang.port_info(TubeTest.Remote.port(owner), :name)
end
