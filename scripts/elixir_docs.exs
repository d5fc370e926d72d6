# Writes an HTML page for each Elixir module of the tube application from
# the docs compiled into its .beam (Code.fetch_docs/1): the module doc,
# then each public function with its signature, spec and doc. Markdown is
# rendered for what these docs use: paragraphs, `code`, indented code
# blocks, bullet lists and links left as text.
#
#   mix run --no-start scripts/elixir_docs.exs OUT_DIR
defmodule TubeDocs.Html do
  @moduledoc false

  def page(module) do
    {:docs_v1, _, :elixir, _, %{"en" => moduledoc}, _, entries} = Code.fetch_docs(module)
    specs = specs(module)
    name = inspect(module)

    functions =
      for {{kind, fun, arity}, _anno, [signature | _], doc, _meta} <- Enum.sort(entries),
          kind in [:function, :macro],
          doc != :hidden do
        text = if is_map(doc), do: doc["en"], else: ""

        """
        <section id="#{fun}/#{arity}">
        <h3><code>#{esc(signature)}</code></h3>
        #{Enum.map_join(Map.get(specs, {fun, arity}, []), "\n", &"<pre class=\"spec\">#{esc(&1)}</pre>")}
        #{markdown(text)}
        </section>
        """
      end

    """
    <!DOCTYPE html>
    <html><head><meta charset="utf-8"><title>#{name}</title>
    <style>body{font-family:sans-serif;max-width:50em;margin:2em auto;line-height:1.4}
    pre{background:#f4f4f4;padding:.6em;overflow-x:auto} .spec{background:#eef}</style>
    </head><body>
    <h1>#{name}</h1>
    #{markdown(moduledoc)}
    <h2>Functions</h2>
    #{Enum.join(functions, "\n")}
    </body></html>
    """
  end

  defp specs(module) do
    case Code.Typespec.fetch_specs(module) do
      {:ok, specs} ->
        Map.new(specs, fn {{fun, arity}, forms} ->
          {{fun, arity}, Enum.map(forms, &Macro.to_string(Code.Typespec.spec_to_quoted(fun, &1)))}
        end)

      :error ->
        %{}
    end
  end

  def markdown(text) do
    text
    |> String.split(~r/\n\s*\n/, trim: true)
    |> Enum.map_join("\n", &block/1)
  end

  defp block(b) do
    lines = b |> String.trim_trailing() |> String.split("\n")

    cond do
      Enum.all?(lines, &String.starts_with?(&1, "    ")) ->
        "<pre><code>" <> esc(Enum.map_join(lines, "\n", &String.slice(&1, 4..-1//1))) <> "</code></pre>"

      String.match?(hd(lines), ~r/^\s*[*-] /) ->
        items = b |> String.split(~r/^\s*[*-] /m, trim: true) |> Enum.map(&"<li>#{inline(&1)}</li>")
        "<ul>" <> Enum.join(items) <> "</ul>"

      true ->
        "<p>" <> inline(b) <> "</p>"
    end
  end

  defp inline(text) do
    text
    |> String.split("`")
    |> Enum.with_index()
    |> Enum.map_join(fn
      {s, i} when rem(i, 2) == 1 -> "<code>" <> esc(s) <> "</code>"
      {s, _} -> esc(s)
    end)
  end

  defp esc(s), do: s |> to_string() |> String.replace("&", "&amp;") |> String.replace("<", "&lt;") |> String.replace(">", "&gt;")
end

[out] = System.argv()
File.mkdir_p!(out)
{:ok, modules} = :application.get_key(:tube, :modules)
# Modules with a public module doc (test support modules have none).
elixir = for m <- modules, match?({:docs_v1, _, :elixir, _, %{}, _, _}, Code.fetch_docs(m)), do: m
for m <- elixir, do: File.write!(Path.join(out, "#{inspect(m)}.html"), TubeDocs.Html.page(m))

index =
  "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>tube: Elixir reference</title></head><body>" <>
    "<h1>tube: Elixir reference</h1><ul>" <>
    Enum.map_join(elixir, fn m -> "<li><a href=\"#{inspect(m)}.html\">#{inspect(m)}</a></li>" end) <>
    "</ul><p>The Erlang modules: <a href=\"../erlang/index.html\">../erlang/index.html</a>.</p></body></html>\n"

File.write!(Path.join(out, "index.html"), index)
