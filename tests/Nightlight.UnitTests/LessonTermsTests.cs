namespace Nightlight.Tests;

/// <summary>
/// docs/lesson.zh-CN.md speaks the Chinese lesson's language: its headings are the lesson's own, and its terms are the
/// ones the lesson uses, so a learner reading both sees one vocabulary.
/// </summary>
public class LessonTermsTests
{
    static readonly string Page = File.ReadAllText(Path.Combine(Root(), "docs", "lesson.zh-CN.md"));

    [Theory]
    // Headings of the lesson (IoT for Beginners, lesson 4, Simplified Chinese) that the page's steps mirror.
    [InlineData("将您的 IoT 设备连接到 MQTT")]
    [InlineData("从您的 IoT 设备发送遥测数据")]
    [InlineData("从 MQTT 代理接收遥测数据")]
    [InlineData("向 MQTT 代理发送命令")]
    [InlineData("处理 IoT 设备上的命令")]
    [InlineData("失去连接")]
    [InlineData("服务器代码")]
    public void A_step_heading_uses_the_lessons_own_heading(string heading)
    {
        Assert.Contains(Page.Split('\n'), line => line.StartsWith("## ", StringComparison.Ordinal) && line.Contains(heading, StringComparison.Ordinal));
    }

    [Theory]
    // The lesson's word, and the one the page used before that a learner would not find in the lesson.
    [InlineData("有效负载", "的负载")]
    [InlineData("失去连接", "断开连接")]
    [InlineData("遥测数据", "即遥测（")]
    public void The_page_uses_the_lessons_term(string lessonTerm, string notTheLessons)
    {
        Assert.Contains(lessonTerm, Page);
        Assert.DoesNotContain(notTheLessons, Page);
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
