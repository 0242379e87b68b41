using System.Text.RegularExpressions;
using System.Xml.Linq;

namespace Nightlight.Tests;

/// <summary>
/// The architecture map and the internals page name files by their repository path, and README's "How it is built"
/// table names every project: a file moved or a project added without its doc fails here, so the map cannot drift.
/// </summary>
public partial class DocumentationMapTests
{
    static readonly string Root = FindRoot();

    [Theory]
    [InlineData("docs/architecture.md")]
    [InlineData("docs/internals.md")]
    public void Every_repository_path_and_link_on_the_page_exists(string page)
    {
        var text = File.ReadAllText(Path.Combine(Root, page));
        var missing = new List<string>();
        foreach (Match m in RepositoryPath().Matches(text))
        {
            Check(m.Groups["path"].Value, m.Groups["anchor"].Value, missing);
        }
        foreach (Match m in RelativeLink().Matches(text))
        {
            var target = m.Groups["path"].Value;
            var path = target.Length == 0 ? page : Path.GetRelativePath(Root, Path.GetFullPath(Path.Combine(Root, Path.GetDirectoryName(page)!, target)));
            Check(path.Replace('\\', '/'), m.Groups["anchor"].Value, missing);
        }
        Assert.True(missing.Count == 0, $"{page} names what does not exist:\n" + string.Join("\n", missing));
    }

    [Theory]
    [InlineData("README.md", "## How it is built")]
    [InlineData("README.zh-CN.md", "## 它是如何构成的")]
    public void How_it_is_built_lists_every_project_of_the_solution(string page, string heading)
    {
        var text = File.ReadAllText(Path.Combine(Root, page));
        var start = text.IndexOf(heading + "\n", StringComparison.Ordinal);
        Assert.True(start >= 0, $"{page} has no section '{heading}'");
        var end = text.IndexOf("\n## ", start + heading.Length, StringComparison.Ordinal);
        var section = end < 0 ? text[start..] : text[start..end];
        var listed = TableFolder().Matches(section).Select(m => m.Groups["folder"].Value).ToHashSet();

        var projects = XDocument.Load(Path.Combine(Root, "Nightlight.slnx")).Descendants("Project")
            .Select(p => Path.GetDirectoryName((string)p.Attribute("Path")!)!.Replace('\\', '/')).ToList();
        Assert.NotEmpty(projects);
        var unlisted = projects.Where(p => !listed.Contains(p)).ToList();
        Assert.True(unlisted.Count == 0, $"{page}, '{heading}': no row for " + string.Join(", ", unlisted));
        var gone = listed.Where(f => !Directory.Exists(Path.Combine(Root, f))).ToList();
        Assert.True(gone.Count == 0, $"{page}, '{heading}': rows for folders that do not exist: " + string.Join(", ", gone));
    }

    static void Check(string path, string anchor, List<string> missing)
    {
        var full = Path.Combine(Root, path);
        if (!File.Exists(full) && !Directory.Exists(full))
        {
            missing.Add(path);
        }
        else if (anchor.Length > 0 && path.EndsWith(".md", StringComparison.Ordinal) && !Anchors(full).Contains(anchor))
        {
            missing.Add($"{path}#{anchor}");
        }
    }

    /// <summary>Explicit <c>&lt;a id="..."&gt;</c> anchors and the ones GitHub makes from headings.</summary>
    static HashSet<string> Anchors(string markdownFile)
    {
        var text = File.ReadAllText(markdownFile);
        var anchors = ExplicitAnchor().Matches(text).Select(m => m.Groups[1].Value).ToHashSet();
        foreach (Match heading in Heading().Matches(text))
        {
            anchors.Add(NotInSlug().Replace(heading.Groups[1].Value.Trim().ToLowerInvariant(), "").Replace(' ', '-'));
        }
        return anchors;
    }

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

    // A path from the repository root as the docs write it: src/Nightlight.Server/Rules/RuleBook.cs, docs/x.md#anchor.
    [GeneratedRegex(@"(?<![\w./-])(?<path>(?:src|tests|samples|bench|docs|deploy|scripts)/[\w./-]*[\w/])(?:#(?<anchor>[\w-]+))?")]
    private static partial Regex RepositoryPath();

    // A Markdown link to a file beside the page (or to an anchor on it): [deploy.md](deploy.md#x), [x](#y).
    [GeneratedRegex(@"\]\((?<path>[^)#:\s]*)(?:#(?<anchor>[\w-]+))?\)")]
    private static partial Regex RelativeLink();

    [GeneratedRegex(@"^\| `(?<folder>[\w./-]+)` \|", RegexOptions.Multiline)]
    private static partial Regex TableFolder();

    [GeneratedRegex(@"<a id=""([^""]+)""")]
    private static partial Regex ExplicitAnchor();

    [GeneratedRegex(@"^#+ (.+)$", RegexOptions.Multiline)]
    private static partial Regex Heading();

    [GeneratedRegex(@"[^\w\- ]")]
    private static partial Regex NotInSlug();
}
