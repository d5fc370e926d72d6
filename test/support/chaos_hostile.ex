defmodule TubeTest.ChaosHostile do
  @moduledoc false
  # Drives native/tube_chaos's `tube-hostile` binary from tests: builds it
  # with cargo (same target dir as mix), records the Xenstore layout of a
  # BEAM nock for it, runs it with the suite's Xenstore socket, collects its
  # output lines, and accepts its tubes on this node.

  alias TubeTest.PeerNode

  @doc "Builds tube-hostile (release, like the rest of the native code) and returns its path."
  def build! do
    cargo = System.find_executable("cargo") || Path.expand("~/.cargo/bin/cargo")

    {out, status} =
      System.cmd(cargo, ["build", "--release", "-p", "tube_chaos", "--bin", "tube-hostile"],
        stderr_to_stdout: true
      )

    if status != 0, do: raise("cargo build -p tube_chaos failed:\n" <> out)
    path = Path.join([System.get_env("CARGO_TARGET_DIR") || "target", "release", "tube-hostile"])
    true = File.exists?(path)
    Path.expand(path)
  end

  @doc """
  Writes to `file` the layout of the nodes a BEAM nock creates for one tube
  (see native/tube_chaos/src/nock.rs), as tube itself writes them today: a
  fresh peer node opens a tube to a domain made for the purpose, which looks
  like a tube node from outside (it is given the nodes the peer has for
  itself) but never answers. The nodes that appear are the nock's; their
  domids and tube id become `{me}`, `{tip}` and `{tid}`. The domain then
  leaves, the open gives up, and the peer stops.
  """
  def record_layout!(sock, file) do
    {:ok, dom0} = :tube_xs.open(sock, 0)
    {peer, f, _} = PeerNode.start()
    {:ok, x} = :tube_xs.open(sock, System.unique_integer([:positive]))
    {:ok, dx} = :tube_xs.introduce_self(x, :auto)
    tid = 3_141_592
    names = %{Integer.to_string(f) => "{me}", Integer.to_string(dx) => "{tip}", Integer.to_string(tid) => "{tid}"}

    try do
      # The nodes a tube node has for itself, given to the new domain.
      mirror = %{Integer.to_string(f) => Integer.to_string(dx)}

      for {path, {value, perms}} <- Enum.sort(tree(dom0, "/local/domain/#{f}")), path != "/local/domain/#{f}" do
        path = rename(path, mirror)
        :ok = :tube_xs.write(x, path, rename_value(value, mirror))
        :ok = :tube_xs.set_perms(x, path, for({a, d} <- perms, do: {a, if(d == f, do: dx, else: d)}))
      end

      before = tree(dom0, "/local/domain")
      opener = Task.async(fn -> PeerNode.call(peer, :tube, :open, [dx, tid, %{timeout: 120_000}], 130_000) end)
      # The nock writes its nodes in one transaction: they appear together.
      TubeTest.Checks.wait_until(fn -> Map.keys(tree(dom0, "/local/domain")) != Map.keys(before) end)
      created = Map.drop(tree(dom0, "/local/domain"), Map.keys(before))
      :tube_xs.close(x)
      {:error, _} = Task.await(opener, 130_000)

      nodes =
        for {path, {value, perms}} <- Enum.sort(created) do
          perms = Enum.map_join(perms, ",", fn {a, d} -> access_letter(a) <> Map.get(names, Integer.to_string(d), Integer.to_string(d)) end)
          "node\t#{rename(path, names)}\t#{perms}\t#{Base.encode16(rename_value(value, names), case: :lower)}\n"
        end

      dir = fn under -> Enum.find(Map.keys(created), &(String.starts_with?(&1, under) and String.ends_with?(&1, "/#{tid}"))) end
      nock = dir.("/local/domain/#{f}/")
      tip = dir.("/local/domain/#{dx}/")
      true = is_binary(nock) and is_binary(tip)
      File.write!(file, ["nock\t#{rename(nock, names)}\n", "tip\t#{rename(tip, names)}\n" | nodes])
      file
    after
      PeerNode.stop(peer)
      :tube_xs.close(x)
      _ = :tube_xs.rm(dom0, "/local/domain/#{dx}")
      :tube_xs.close(dom0)
    end
  end

  # Every node at and below `path`: path => {value, permissions}. Nodes that
  # go away while this walks are left out.
  defp tree(c, path) do
    with {:ok, value} <- :tube_xs.read(c, path),
         {:ok, perms} <- :tube_xs.get_perms(c, path),
         {:ok, kids} <- :tube_xs.directory(c, path) do
      Enum.reduce(kids, %{path => {value, perms}}, fn k, acc -> Map.merge(acc, tree(c, path <> "/" <> k)) end)
    else
      _ -> %{}
    end
  end

  # Path segments named in `names` replaced.
  defp rename(path, names), do: path |> String.split("/") |> Enum.map_join("/", &Map.get(names, &1, &1))

  # Values that are paths, renamed; other values as they are.
  defp rename_value("/" <> _ = v, names), do: rename(v, names)
  defp rename_value(v, _names), do: v

  defp access_letter(:none), do: "n"
  defp access_letter(:read), do: "r"
  defp access_letter(:write), do: "w"
  defp access_letter(:both), do: "b"

  @doc "Starts the binary with `args`; returns a handle for await/2."
  def start(bin, args) do
    Port.open({:spawn_executable, bin}, [
      :binary,
      :exit_status,
      :stderr_to_stdout,
      {:line, 4096},
      args: Enum.map(args, &to_string/1)
    ])
  end

  @doc "Waits for the binary to exit: {exit_status, lines, result_map}."
  def await(port, timeout) do
    deadline = System.monotonic_time(:millisecond) + timeout
    collect(port, deadline, [])
  end

  @doc "Runs the binary to completion."
  def run(bin, args, timeout), do: await(start(bin, args), timeout)

  defp collect(port, deadline, lines) do
    left = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {^port, {:data, {_, line}}} ->
        collect(port, deadline, [line | lines])

      {^port, {:exit_status, status}} ->
        lines = Enum.reverse(lines)
        {status, lines, result(lines)}
    after
      left ->
        {:os_pid, os_pid} = Port.info(port, :os_pid)
        System.cmd("kill", ["-9", Integer.to_string(os_pid)])
        raise "tube-hostile did not finish in time; output so far: #{inspect(Enum.reverse(lines))}"
    end
  end

  # The `RESULT k=v ...` line as a map of strings.
  defp result(lines) do
    case Enum.find(lines, &String.starts_with?(&1, "RESULT ")) do
      nil ->
        %{}

      "RESULT " <> rest ->
        for kv <- String.split(rest), [k, v] = String.split(kv, "=", parts: 2), into: %{}, do: {k, v}
    end
  end

  @doc """
  Accepts tubes on this node until told to stop, draining each (echoing
  every eighth packet) until it closes. Returns the acceptor's pid; stop/1
  returns %{reasons: [reason], packets: n}.
  """
  def start_acceptor do
    spawn_link(fn -> accept_loop(%{reasons: [], packets: 0}) end)
  end

  def stop_acceptor(pid, timeout \\ 10_000) do
    ref = make_ref()
    send(pid, {:stop, self(), ref})

    receive do
      {^ref, st} -> st
    after
      timeout -> raise "acceptor did not stop"
    end
  end

  defp accept_loop(st) do
    receive do
      {:stop, from, ref} -> send(from, {ref, %{st | reasons: Enum.reverse(st.reasons)}})
    after
      0 ->
        case :tube.accept(%{timeout: 500}) do
          {:ok, t} -> accept_loop(drain(t, st))
          {:error, :timeout} -> accept_loop(st)
          {:error, other} -> accept_loop(%{st | reasons: [{:accept_error, other} | st.reasons]})
        end
    end
  end

  defp drain(t, st) do
    receive do
      {^t, {:data, data}} ->
        if rem(st.packets, 8) == 0 do
          try do
            Port.command(t, data)
          rescue
            ArgumentError -> :closed
          end
        end

        drain(t, %{st | packets: st.packets + 1})

      {:tube_closed, ^t, reason} ->
        %{st | reasons: [reason | st.reasons]}
    after
      30_000 -> %{st | reasons: [:stuck | st.reasons]}
    end
  end
end
