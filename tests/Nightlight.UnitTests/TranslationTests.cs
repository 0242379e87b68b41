using System.Text.RegularExpressions;

namespace Nightlight.Tests;

/// <summary>
/// The Chinese pages translate the prose and keep every command and output block as it is in the English page,
/// so a block changed in one and forgotten in the other fails here.
/// </summary>
public partial class TranslationTests
{
    [Theory]
    [InlineData("README.md", "README.zh-CN.md")]
    [InlineData("docs/lesson.md", "docs/lesson.zh-CN.md")]
    public void Translated_pages_keep_the_code_and_output_blocks_of_the_English_page(string english, string chinese)
    {
        var root = FindRoot();
        var expected = Blocks(File.ReadAllText(Path.Combine(root, english)));
        var actual = Blocks(File.ReadAllText(Path.Combine(root, chinese)));
        Assert.NotEmpty(expected);
        Assert.Equal(expected, actual);
    }

    [Theory]
    [InlineData("README.md", "README.zh-CN.md")]
    [InlineData("docs/lesson.md", "docs/lesson.zh-CN.md")]
    public void English_and_Chinese_pages_link_to_each_other(string english, string chinese)
    {
        var root = FindRoot();
        Assert.Contains($"[简体中文]({Path.GetFileName(chinese)})", File.ReadAllText(Path.Combine(root, english)));
        Assert.Contains($"[English]({Path.GetFileName(english)})", File.ReadAllText(Path.Combine(root, chinese)));
    }

    static List<string> Blocks(string markdown) => FencedBlock().Matches(markdown).Select(m => m.Value).ToList();

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

    [GeneratedRegex(@"```[a-z]*\n.*?```", RegexOptions.Singleline)]
    private static partial Regex FencedBlock();
}
