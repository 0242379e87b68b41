namespace Nightlight.Server.Pipeline;

/// <summary>
/// Where the server says the lesson's lines (<c>Message received: {"light": 412}</c>), apart from diagnostic logs;
/// the host decides where they go (the CLI: standard output).
/// </summary>
public interface ILessonLog
{
    /// <summary>Says nothing, for a quiet server (<c>Server:Quiet</c>).</summary>
    static ILessonLog None { get; } = new Silent();

    /// <summary>False when nobody reads the lines: a caller can skip building them.</summary>
    bool IsOn { get; }

    /// <summary>Writes one line, prefixed by who says it (<c>server</c>, <c>server → nightlight1</c>).</summary>
    void Say(string who, string line);

    private sealed class Silent : ILessonLog
    {
        public bool IsOn => false;

        public void Say(string who, string line)
        {
        }
    }
}
