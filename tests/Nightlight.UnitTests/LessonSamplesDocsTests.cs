namespace Nightlight.Tests;

/// <summary>The code a learner writes, as docs/lesson.md shows it, is the code the integration tests run.</summary>
public class LessonSamplesDocsTests
{
    public static readonly TheoryData<string, string, string> Samples = new()
    {
        { "docs/lesson.md", "samples/Lesson/python/device.py", "python" },
        { "docs/lesson.md", "samples/Lesson/python/server.py", "python" },
        { "docs/lesson.md", "samples/Lesson/Device/Program.cs", "csharp" },
        { "docs/lesson.md", "samples/Lesson/Server/Program.cs", "csharp" },
        { "docs/lesson.zh-CN.md", "samples/Lesson/python/device.py", "python" },
        { "docs/lesson.zh-CN.md", "samples/Lesson/python/server.py", "python" },
        { "docs/lesson.zh-CN.md", "samples/Lesson/Device/Program.cs", "csharp" },
        { "docs/lesson.zh-CN.md", "samples/Lesson/Server/Program.cs", "csharp" },
    };

    [Theory]
    [MemberData(nameof(Samples))]
    public void The_lesson_page_shows_each_sample_file_whole_and_unchanged(string page, string sample, string language)
    {
        var root = Root();
        var text = File.ReadAllText(Path.Combine(root, page)).ReplaceLineEndings("\n");
        var code = File.ReadAllText(Path.Combine(root, sample)).ReplaceLineEndings("\n");
        // Each file begins with a comment naming itself, so the page's block is found by that line.
        var firstLine = code[..code.IndexOf('\n')];
        var start = text.IndexOf($"```{language}\n{firstLine}\n", StringComparison.Ordinal);
        Assert.True(start >= 0, $"{page} has no ```{language} block starting with '{firstLine}'");
        var body = start + language.Length + 4;
        var end = text.IndexOf("```\n", body, StringComparison.Ordinal);
        Assert.Equal(code, text[body..end]);
    }

    static string Root()
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
}
