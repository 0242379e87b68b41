using System.Net.ServerSentEvents;
using System.Text.Json;
using System.Threading.Channels;

namespace Nightlight.Web;

/// <summary>
/// Fans events out to every open page (server-sent events). Each page has its own small bounded queue: a page that
/// stops reading loses its oldest events, never slows the MQTT feed down. Thread-safe.
/// </summary>
public sealed class LiveEvents
{
    /// <summary>Events queued per page before the oldest is dropped.</summary>
    public const int QueuePerPage = 512;

    internal static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    readonly Lock _gate = new();
    // Replaced, never changed, when a page comes or goes: publishing (once per reading) reads it without a lock.
    volatile Channel<SseItem<string>>[] _pages = [];

    /// <summary>Pages listening now. With none, callers need not build the event at all.</summary>
    public int Listeners => _pages.Length;

    /// <summary>Sends <paramref name="data"/> as JSON to every page, as an event named <paramref name="type"/>.</summary>
    public void Publish(string type, object data)
    {
        var pages = _pages;
        if (pages.Length == 0)
        {
            return;
        }
        var item = new SseItem<string>(JsonSerializer.Serialize(data, Json), type);
        foreach (var page in pages)
        {
            page.Writer.TryWrite(item);
        }
    }

    /// <summary>Streams <paramref name="first"/> and then every published event until the page goes away.</summary>
    public async IAsyncEnumerable<SseItem<string>> StreamAsync(IEnumerable<(string Type, object Data)> first,
        [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var page = Channel.CreateBounded<SseItem<string>>(new BoundedChannelOptions(QueuePerPage)
        {
            FullMode = BoundedChannelFullMode.DropOldest,
            SingleReader = true,
        });
        // Subscribe before taking the snapshot, so nothing between the two is lost (a duplicate is harmless).
        lock (_gate)
        {
            _pages = [.. _pages, page];
        }
        try
        {
            foreach (var (type, data) in first)
            {
                yield return new SseItem<string>(JsonSerializer.Serialize(data, Json), type);
            }
            while (true)
            {
                SseItem<string> item;
                try
                {
                    if (!await page.Reader.WaitToReadAsync(cancellationToken).ConfigureAwait(false))
                    {
                        yield break;
                    }
                    if (!page.Reader.TryRead(out item))
                    {
                        continue;
                    }
                }
                catch (OperationCanceledException)
                {
                    yield break;
                }
                yield return item;
            }
        }
        finally
        {
            lock (_gate)
            {
                _pages = _pages.Where(p => p != page).ToArray();
            }
        }
    }
}
