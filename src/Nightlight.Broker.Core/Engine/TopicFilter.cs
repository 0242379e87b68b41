using System.Text;

namespace Nightlight.Broker.Core.Engine;

/// <summary>Topic names and filters: validation, <c>$share</c> parsing and matching (MQTT 5 section 4.7, 4.8.2).</summary>
internal static class TopicFilter
{
    internal const string SharePrefix = "$share/";

    /// <summary>A name a PUBLISH may carry: not empty, no wildcard, not longer than <paramref name="maxLength"/> UTF-8 bytes.</summary>
    public static bool IsValidTopicName(string topic, int maxLength) =>
        topic.Length != 0 && topic.AsSpan().IndexOfAny('+', '#', '\0') < 0 && WithinLength(topic, maxLength);

    /// <summary>
    /// Splits a SUBSCRIBE filter into its share group (null when not shared) and the filter that matches topics.
    /// False when either part is malformed.
    /// </summary>
    public static bool TryParseSubscription(string filter, int maxLength, out string? shareGroup, out string topicFilter)
    {
        shareGroup = null;
        topicFilter = filter;
        if (!WithinLength(filter, maxLength))
        {
            return false;
        }

        if (filter.StartsWith(SharePrefix, StringComparison.Ordinal))
        {
            var rest = filter.AsSpan(SharePrefix.Length);
            var slash = rest.IndexOf('/');
            if (slash <= 0 || rest[..slash].IndexOfAny('+', '#') >= 0)
            {
                return false;
            }

            shareGroup = rest[..slash].ToString();
            topicFilter = rest[(slash + 1)..].ToString();
        }

        return IsValidFilter(topicFilter);
    }

    /// <summary>Wildcards only as whole levels, <c>#</c> only last.</summary>
    public static bool IsValidFilter(string filter)
    {
        if (filter.Length == 0 || filter.Contains('\0'))
        {
            return false;
        }

        for (var i = 0; i < filter.Length; i++)
        {
            var c = filter[i];
            if (c is not ('+' or '#'))
            {
                continue;
            }

            var wholeLevel = (i == 0 || filter[i - 1] == '/') && (i == filter.Length - 1 || filter[i + 1] == '/');
            if (!wholeLevel || (c == '#' && i != filter.Length - 1))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>
    /// Whether <paramref name="filter"/> (no <c>$share</c> prefix) matches <paramref name="topic"/>; a topic starting with
    /// <c>$</c> is not matched by a filter starting with a wildcard (MQTT-4.7.2-1).
    /// </summary>
    public static bool Matches(string filter, string topic)
    {
        if (topic.Length > 0 && topic[0] == '$' && filter.Length > 0 && filter[0] is '+' or '#')
        {
            return false;
        }

        var f = filter.AsSpan();
        var t = topic.AsSpan();
        while (true)
        {
            var fSlash = f.IndexOf('/');
            var fLevel = fSlash < 0 ? f : f[..fSlash];
            if (fLevel is "#")
            {
                return true;
            }

            var tSlash = t.IndexOf('/');
            var tLevel = tSlash < 0 ? t : t[..tSlash];
            if (fLevel is not "+" && !fLevel.SequenceEqual(tLevel))
            {
                return false;
            }

            if (fSlash < 0 || tSlash < 0)
            {
                // "a/#" also matches "a": the filter may end in one more "#" level.
                return fSlash < 0 ? tSlash < 0 : tSlash < 0 && f[(fSlash + 1)..] is "#";
            }

            f = f[(fSlash + 1)..];
            t = t[(tSlash + 1)..];
        }
    }

    private static bool WithinLength(string s, int maxLength) =>
        maxLength <= 0 || s.Length * 3 <= maxLength || Encoding.UTF8.GetByteCount(s) <= maxLength;
}
