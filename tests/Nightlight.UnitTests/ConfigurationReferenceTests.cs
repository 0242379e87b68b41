using System.Text.Json;
using System.Text.RegularExpressions;

namespace Nightlight.Tests;

/// <summary>
/// docs/configuration.md, src/Nightlight/appsettings.example.json and the CLI's flags describe the same settings:
/// a key added in one place and forgotten in another fails here, so the reference cannot drift.
/// </summary>
public partial class ConfigurationReferenceTests
{
    static readonly string Root = FindRoot();

    static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Nightlight.slnx")))
            {
                return dir.FullName;
            }
        }
        throw new InvalidOperationException("Nightlight.slnx not found above " + AppContext.BaseDirectory);
    }

    /// <summary>Rows of the reference tables: key → (environment variable cell, whole row).</summary>
    static Dictionary<string, (string Environment, string Row)> DocumentedKeys()
    {
        var keys = new Dictionary<string, (string, string)>(StringComparer.OrdinalIgnoreCase);
        foreach (var line in File.ReadLines(Path.Combine(Root, "docs", "configuration.md")))
        {
            var match = ReferenceRow().Match(line);
            if (match.Success)
            {
                Assert.True(keys.TryAdd(match.Groups["key"].Value, (match.Groups["env"].Value, line)), $"documented twice: {match.Groups["key"].Value}");
            }
        }
        return keys;
    }

    /// <summary>Every leaf of a JSON configuration file, as Section:Key.</summary>
    static Dictionary<string, JsonElement> Leaves(string path)
    {
        var leaves = new Dictionary<string, JsonElement>(StringComparer.OrdinalIgnoreCase);
        void Walk(JsonElement element, string prefix)
        {
            if (element.ValueKind == JsonValueKind.Object && element.EnumerateObject().Any())
            {
                foreach (var property in element.EnumerateObject())
                {
                    Walk(property.Value, prefix.Length == 0 ? property.Name : $"{prefix}:{property.Name}");
                }
            }
            else
            {
                leaves[prefix] = element.Clone();
            }
        }
        using var document = JsonDocument.Parse(File.ReadAllText(path));
        Walk(document.RootElement, "");
        return leaves;
    }

    static void Missing(string what, IEnumerable<string> keys)
    {
        var list = keys.ToList();
        Assert.True(list.Count == 0, $"{what}: {string.Join(", ", list)}");
    }

    static string Example => Path.Combine(Root, "src", "Nightlight", "appsettings.example.json");

    [Fact]
    public void Every_documented_key_is_in_the_example_file_and_every_example_key_is_documented()
    {
        var documented = DocumentedKeys();
        var example = Leaves(Example);
        Assert.True(documented.Count > 20, $"only {documented.Count} rows parsed from docs/configuration.md");
        Missing("documented but not in appsettings.example.json", documented.Keys.Where(key => !example.ContainsKey(key)));
        Missing("in appsettings.example.json but not documented", example.Keys.Where(key => !documented.ContainsKey(key)));
    }

    [Fact]
    public void Every_documented_key_names_its_environment_variable()
    {
        foreach (var (key, (environment, row)) in DocumentedKeys())
        {
            Assert.True(environment == "NIGHTLIGHT_" + key.Replace(":", "__", StringComparison.Ordinal), row);
        }
    }

    [Fact]
    public void Every_flag_key_in_the_commands_is_documented()
    {
        var documented = DocumentedKeys();
        var source = File.ReadAllText(Path.Combine(Root, "src", "Nightlight", "NightlightCommands.cs"));
        var keys = FlagKey().Matches(source).Select(m => m.Groups["key"].Value).Distinct().ToList();
        Assert.NotEmpty(keys);
        // A key built from a section ("section + \":Username\"") is checked by its ending.
        Missing("flag keys not in docs/configuration.md", keys.Where(key => key.StartsWith(':')
            ? !documented.Keys.Any(d => d.EndsWith(key, StringComparison.OrdinalIgnoreCase))
            : !documented.ContainsKey(key)));
    }

    [Fact]
    public void The_shipped_defaults_match_the_example_file()
    {
        var example = Leaves(Example);
        foreach (var (key, value) in Leaves(Path.Combine(Root, "src", "Nightlight", "appsettings.json")))
        {
            if (key.Equals("Device:Id", StringComparison.OrdinalIgnoreCase))
            {
                // No default id in appsettings.json (device requires --id); the example names one so it runs `up` as is.
                continue;
            }
            Assert.True(example.TryGetValue(key, out var written), $"{key} is in appsettings.json but not in the example");
            Assert.True(value.ToString() == written.ToString(), $"{key}: appsettings.json says {value}, the example says {written}");
        }
    }

    [GeneratedRegex(@"^\| `(?<key>[A-Za-z]+(?::[A-Za-z.]+)+)` \|.*\| `(?<env>NIGHTLIGHT_[A-Za-z_.]+)` \|")]
    private static partial Regex ReferenceRow();

    [GeneratedRegex(@"""(?<key>(?:[A-Z][A-Za-z]+)?(?::[A-Z][A-Za-z]+)+)""")]
    private static partial Regex FlagKey();
}
