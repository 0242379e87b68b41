using Nightlight.Server.Pipeline;

namespace Nightlight.Cli;

/// <summary>
/// Where the lesson-style lines go (<c>Message received: {"light": 412}</c>): the lines a learner reads, kept apart
/// from diagnostic logs. Each line is written whole, so roles sharing one console never interleave mid-line.
/// On a terminal it can also keep one status line below them (<see cref="ShowStatus"/>), redrawn in place.
/// </summary>
/// <param name="writer">Where the lines go.</param>
/// <param name="width">Width of the column of who says a line; it grows to the longest name said so far.</param>
sealed class LessonOutput(TextWriter writer, int width = 0) : ILessonLog
{
    // Erase the current line and go back to its start (ANSI), so the status line leaves no trace under a lesson line.
    const string ClearLine = "\r\u001b[2K";

    // Wide enough for "server → " and an id as long as the lesson's nightlight1 from the first line: a column that
    // grew when a second device spoke would leave the lines above it out of line.
    static readonly int LessonWidth = "server → nightlight1".Length;

    static readonly Lock Gate = new();
    string? _status;
    string? _input;
    int _width = Math.Max(width, LessonWidth);

    /// <summary>Writes nowhere.</summary>
    public static LessonOutput None { get; } = new(TextWriter.Null);

    /// <summary>False for <see cref="None"/>: a caller can skip building lines nobody reads.</summary>
    public bool IsOn => !ReferenceEquals(writer, TextWriter.Null);

    /// <summary>Writes one line, prefixed by who says it (<c>server</c>, <c>device nightlight1</c>).</summary>
    public void Say(string who, string line)
    {
        if (!IsOn)
        {
            return;
        }
        lock (Gate)
        {
            if (Bottom is not null)
            {
                writer.Write(ClearLine);
            }
            _width = Math.Max(_width, who.Length);
            writer.Write(who.PadRight(_width));
            writer.Write(" | ");
            writer.WriteLine(line);
            if (Bottom is { } bottom)
            {
                writer.Write(bottom);
            }
            writer.Flush();
        }
    }

    /// <summary>
    /// Keeps <paramref name="status"/> as the last line of the terminal, without a line break, until the next call;
    /// lesson lines are written above it. Null removes it. Only for a terminal: it uses ANSI escapes.
    /// </summary>
    public void ShowStatus(string? status)
    {
        lock (Gate)
        {
            if (status is null && _status is null)
            {
                return;
            }
            _status = status;
            RedrawBottom();
        }
    }

    /// <summary>True once a status line is kept at the bottom: typed text is then drawn by <see cref="ShowInput"/>, not echoed by the terminal.</summary>
    public bool KeepsStatus { get; set; }

    /// <summary>
    /// Shows the line being typed (<c>&gt; 12</c>) as the bottom line in place of the status, until null: the terminal's
    /// own echo would land on the status line and be erased by its next redraw.
    /// </summary>
    public void ShowInput(string? typed)
    {
        lock (Gate)
        {
            _input = typed;
            RedrawBottom();
        }
    }

    // The line kept at the bottom: what is being typed, else the status.
    string? Bottom => _input is not null ? "> " + _input : _status;

    void RedrawBottom()
    {
        writer.Write(ClearLine);
        if (Bottom is { } bottom)
        {
            writer.Write(bottom);
        }
        writer.Flush();
    }

    /// <summary>
    /// Runs <paramref name="write"/> (a log line on standard error, which shares the terminal) with the status line
    /// taken away and put back after, so the two never end up on one line.
    /// </summary>
    public void WriteBesideStatus(Action write)
    {
        lock (Gate)
        {
            if (Bottom is not { } bottom)
            {
                write();
                return;
            }
            writer.Write(ClearLine);
            writer.Flush();
            write();
            writer.Write(bottom);
            writer.Flush();
        }
    }
}
