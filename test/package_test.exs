defmodule TubePackageTest do
  # tube as a package: built by rebar3 as a dependency of an Erlang
  # application and used from plain `erl` OS processes (no Elixir), the
  # benchmark kept out of the runtime application, the native build that
  # leaves cargo alone when nothing native changed, the docs, the
  # daemon's start-up errors, and binaries shipped without debug info.
  use ExUnit.Case, async: false

  @root Path.expand("..", __DIR__)
  @moduletag timeout: 600_000

  # The rebar3 application of test/rebar3_app, built once in a temporary
  # directory with this checkout of tube as its dependency.
  setup_all do
    rebar3 = System.find_executable("rebar3") || flunk("rebar3 not installed (scripts/setup.sh installs it)")
    dir = tmp_dir("tube-rebar3-app")
    File.cp_r!(Path.join(@root, "test/rebar3_app"), dir)
    File.mkdir_p!(Path.join(dir, "_checkouts"))
    File.ln_s!(@root, Path.join(dir, "_checkouts/tube"))
    on_exit(fn -> File.rm_rf!(dir) end)

    {out, status} = System.cmd(rebar3, ["compile"], cd: dir, stderr_to_stdout: true, env: plain_env())
    assert status == 0, "rebar3 compile failed:\n#{out}"

    tube_ebin = Path.join(dir, "_build/default/checkouts/tube/ebin")
    ebins = Path.wildcard(Path.join(dir, "_build/default/{lib,checkouts}/*/ebin"))
    %{app_dir: dir, tube_ebin: tube_ebin, ebins: ebins}
  end

  defp tmp_dir(prefix) do
    dir = Path.join(System.tmp_dir!(), "#{prefix}-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    dir
  end

  # No Elixir for the OS processes started here: no ERL_LIBS, and only the
  # code paths they are given.
  defp plain_env, do: [{"ERL_LIBS", nil}, {"ERL_AFLAGS", nil}, {"ERL_ZFLAGS", nil}]

  defp erl, do: System.find_executable("erl")

  # Runs `erl -noshell -pa <paths> -eval <code>`; {output, exit status}.
  defp erl_eval(paths, code, env \\ []) do
    args = ["-noshell", "-noinput"] ++ Enum.flat_map(paths, &["-pa", &1]) ++ ["-eval", code]
    System.cmd(erl(), args, stderr_to_stdout: true, env: plain_env() ++ env)
  end

  describe "rebar3" do
    test "builds tube as a dependency: the application needs kernel and stdlib only", ctx do
      {:ok, [{:application, :tube, props}]} = :file.consult(String.to_charlist(Path.join(ctx.tube_ebin, "tube.app")))
      assert props[:applications] == [:kernel, :stdlib]
      refute Enum.any?(props[:modules], &String.starts_with?(Atom.to_string(&1), "Elixir.")),
             "no Elixir module in the rebar3 build"

      assert File.exists?(Path.join(ctx.tube_ebin, "../priv/tube_nif.so"))
      assert File.exists?(Path.join(ctx.tube_ebin, "../priv/tubestored"))
    end

    test "an Erlang node starts tube with erl -pa ebin, without Elixir on its code path", ctx do
      {out, status} =
        erl_eval([ctx.tube_ebin], ~S"""
        R = application:ensure_all_started(tube),
        io:format("~p ~p ~p ~p~n", [R, code:which(elixir), code:which('Elixir.Tube'),
                                    is_integer(tube:domid())]),
        halt().
        """)

      assert status == 0, out
      assert out =~ "{ok,[tube]} non_existing non_existing true"
    end

    test "two Erlang nodes of the rebar3 application exchange packets over a tube", ctx do
      args = ["-noshell", "-noinput"] ++ Enum.flat_map(ctx.ebins, &["-pa", &1])

      server =
        Port.open({:spawn_executable, erl()}, [
          :binary,
          :exit_status,
          :stderr_to_stdout,
          {:line, 4096},
          {:env, Enum.map(plain_env(), fn {k, nil} -> {String.to_charlist(k), false} end)},
          args: args ++ ["-eval", "pingpong:serve(200)"]
        ])

      {:os_pid, server_pid} = Port.info(server, :os_pid)

      on_exit(fn -> System.cmd("kill", ["-9", Integer.to_string(server_pid)], stderr_to_stdout: true) end)

      domid = wait_line(server, ~r/^domid (\d+)$/) |> Enum.at(1)
      {out, status} = System.cmd(erl(), args ++ ["-eval", "pingpong:ping(#{domid}, 200)"], stderr_to_stdout: true, env: plain_env())
      assert status == 0, out
      assert out =~ "pingpong ok 200"

      wait_line(server, ~r/^served 200$/)
      assert_receive {^server, {:exit_status, 0}}, 30_000
    end
  end

  defp wait_line(port, re) do
    receive do
      {^port, {:data, {:eol, line}}} ->
        case Regex.run(re, line) do
          nil -> wait_line(port, re)
          m -> m
        end

      {^port, {:exit_status, s}} ->
        flunk("the node exited with status #{s} before printing #{inspect(re)}")
    after
      60_000 -> flunk("no line matching #{inspect(re)}")
    end
  end

  describe "Mix" do
    test "the benchmark is its own project: it builds against tube, which carries none of it" do
      build = tmp_dir("tube-bench-build")
      on_exit(fn -> File.rm_rf!(build) end)

      {out, status} =
        System.cmd("mix", ["compile"],
          cd: Path.join(@root, "bench"),
          stderr_to_stdout: true,
          env: [{"MIX_ENV", "dev"}, {"MIX_BUILD_PATH", build}]
        )

      assert status == 0, out

      {:ok, [{:application, :tube, tube}]} = :file.consult(String.to_charlist(Path.join(build, "lib/tube/ebin/tube.app")))
      # Outside the test build (which also holds the Elixir test helpers),
      # Mix's tube.app needs no Elixir either.
      assert tube[:applications] == [:kernel, :stdlib]
      assert :"Elixir.Tube" in tube[:modules]
      refute Enum.any?(tube[:modules], &String.contains?(Atom.to_string(&1), "Bench"))

      {:ok, [{:application, :tube_bench, bench}]} =
        :file.consult(String.to_charlist(Path.join(build, "lib/tube_bench/ebin/tube_bench.app")))

      assert :"Elixir.Mix.Tasks.Tube.Bench" in bench[:modules]

      # And this project's own build knows no bench task.
      refute Enum.any?(Application.spec(:tube, :modules), &String.contains?(Atom.to_string(&1), "Bench"))
      assert Mix.Task.get("tube.bench") == nil
    end
  end

  describe "native build" do
    # A fake cargo first on PATH: it logs each call, and builds two files.
    defp fake_cargo(dir) do
      bin = Path.join(dir, "bin")
      File.mkdir_p!(bin)
      log = Path.join(dir, "cargo.log")

      File.write!(Path.join(bin, "cargo"), """
      #!/bin/sh
      echo "$@" >> #{log}
      mkdir -p target/release
      echo nif > target/release/libtube_nif.so
      echo daemon > target/release/tubestored
      """)

      File.chmod!(Path.join(bin, "cargo"), 0o755)
      {bin, log}
    end

    defp calls(log), do: if(File.exists?(log), do: length(String.split(File.read!(log), "\n", trim: true)), else: 0)

    defp run_script(root, bin) do
      System.cmd("sh", [Path.join(root, "scripts/build-native.sh")],
        stderr_to_stdout: true,
        env: [{"PATH", bin <> ":" <> System.get_env("PATH")}, {"CARGO_TARGET_DIR", nil}]
      )
    end

    test "this checkout, built: the native step does not run cargo" do
      dir = tmp_dir("tube-fake-cargo")
      on_exit(fn -> File.rm_rf!(dir) end)
      {bin, log} = fake_cargo(dir)
      {out, status} = run_script(@root, bin)
      assert status == 0, out
      assert calls(log) == 0
    end

    test "cargo runs when priv/ lacks a binary or a native source is newer, and only then" do
      tree = tmp_dir("tube-native-tree")
      on_exit(fn -> File.rm_rf!(tree) end)
      {bin, log} = fake_cargo(tree)

      File.mkdir_p!(Path.join(tree, "scripts"))
      File.cp!(Path.join(@root, "scripts/build-native.sh"), Path.join(tree, "scripts/build-native.sh"))

      sources =
        ~w(Cargo.toml Cargo.lock c_src/tube_drv.c native/tube_nif/src/lib.rs native/tube_ring/src/ring.rs
           native/tube_xs/src/lib.rs native/tubestored/src/main.rs native/tube_nif/build.rs)

      ignored = ~w(native/tube_xs/fuzz/fuzz_targets/path.rs native/tube_nif/target/x.rs README.md)

      past = System.os_time(:second) - 3600

      for f <- sources ++ ignored do
        path = Path.join(tree, f)
        File.mkdir_p!(Path.dirname(path))
        File.write!(path, "")
        File.touch!(path, past)
      end

      assert {_, 0} = run_script(tree, bin)
      assert calls(log) == 1
      assert File.read!(Path.join(tree, "priv/tube_nif.so")) == "nif\n"
      assert File.read!(Path.join(tree, "priv/tubestored")) == "daemon\n"

      assert {_, 0} = run_script(tree, bin)
      assert calls(log) == 1, "nothing changed: no cargo"

      future = System.os_time(:second) + 3600

      for f <- ignored do
        File.touch!(Path.join(tree, f), future)
        assert {_, 0} = run_script(tree, bin)
        assert calls(log) == 1, "#{f} is not a source of the binaries"
      end

      for {f, n} <- Enum.with_index(sources, 2) do
        File.touch!(Path.join(tree, f), future + n)
        File.touch!(Path.join(tree, "priv/tube_nif.so"), future + n - 1)
        File.touch!(Path.join(tree, "priv/tubestored"), future + n - 1)
        assert {_, 0} = run_script(tree, bin)
        assert calls(log) == n, "#{f} changed: cargo runs"
      end

      File.rm!(Path.join(tree, "priv/tubestored"))
      assert {_, 0} = run_script(tree, bin)
      assert calls(log) == length(sources) + 2
      assert File.exists?(Path.join(tree, "priv/tubestored"))
    end

    test "shipped binaries carry no debug info" do
      readelf = System.find_executable("readelf") || flunk("readelf not found (binutils)")

      for f <- ["priv/tube_nif.so", "priv/tubestored"] do
        {sections, 0} = System.cmd(readelf, ["-S", "-W", Path.join(@root, f)])
        assert sections =~ ".text"
        refute sections =~ ".debug_info", "#{f} has debug info"
      end
    end
  end

  describe "docs" do
    test "h(tube) in an Erlang shell shows the module's docs, from the rebar3 and the Mix builds", ctx do
      code = ~S"""
      {ok, {docs_v1, _, erlang, _, #{<<"en">> := _}, _, _}} = code:get_doc(tube),
      c:h(tube), c:h(tube, controlling_process), halt().
      """

      for ebin <- [ctx.tube_ebin, Path.join(@root, "_build/test/lib/tube/ebin")] do
        {out, status} = erl_eval([ebin], code)
        assert status == 0, out
        assert out =~ "Tubes: shared-memory packet links between Erlang nodes"
        assert out =~ "Makes Pid the owner of Tube, as gen_tcp:controlling_process/2 does"
      end
    end

    test "scripts/docs.sh writes HTML for the Erlang modules and for the Elixir module" do
      {out, status} = System.cmd("bash", [Path.join(@root, "scripts/docs.sh")], cd: @root, stderr_to_stdout: true)
      assert status == 0, out
      erlang = File.read!(Path.join(@root, "doc/erlang/tube.html"))
      assert erlang =~ "controlling_process"
      assert erlang =~ "emsgsize"
      assert File.read!(Path.join(@root, "doc/erlang/index.html")) =~ "tube"
      elixir = File.read!(Path.join(@root, "doc/elixir/Tube.html"))
      assert elixir =~ ~s(<section id="controlling_process/2">)
      assert elixir =~ "<pre class=\"spec\">send(t(), iodata())"
      assert File.exists?(Path.join(@root, "doc/chunks/tube.chunk"))
    end
  end

  describe "daemon start-up errors" do
    test "a missing tubestored binary: the error names its path", ctx do
      dir = tmp_dir("tube-nodaemon")
      on_exit(fn -> File.rm_rf!(dir) end)
      File.mkdir_p!(Path.join(dir, "tube/priv"))
      File.cp_r!(ctx.tube_ebin, Path.join(dir, "tube/ebin"))
      File.cp!(Path.join(@root, "priv/tube_nif.so"), Path.join(dir, "tube/priv/tube_nif.so"))
      # Nothing listens there, so the node must start a daemon.
      socket = Path.join(dir, "run/xenstored.sock")

      {out, _} =
        erl_eval([Path.join(dir, "tube/ebin")], "io:format(\"~0p~n\", [application:ensure_all_started(tube)]), halt().",
          [{"XENSTORED_PATH", socket}])

      exe = Path.join(dir, "tube/priv/tubestored")
      assert out =~ ~s({daemon_binary,"#{exe}",enoent})
      assert out =~ "cannot start the Xenstore daemon: #{exe}: no such file or directory"
    end

    test "a socket directory that cannot be created: the error names it and the cause", ctx do
      dir = tmp_dir("tube-baddir")
      on_exit(fn -> File.rm_rf!(dir) end)
      File.write!(Path.join(dir, "file"), "")
      socket = Path.join(dir, "file/run/xenstored.sock")

      {out, _} =
        erl_eval([ctx.tube_ebin], "io:format(\"~0p~n\", [application:ensure_all_started(tube)]), halt().",
          [{"XENSTORED_PATH", socket}])

      assert out =~ ~s({socket_dir,"#{dir}/file/run",enotdir})
      assert out =~ "socket directory #{dir}/file/run: not a directory"
      refute File.exists?(socket)
    end
  end
end
