using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Http.Features;
using Nightlight.Broker;

namespace Nightlight.Tests.Broker;

/// <summary>The lean transport's feature list behaves as Kestrel's <see cref="FeatureCollection"/> does for what Kestrel and TLS do with it.</summary>
public class SmallFeatureCollectionTests
{
    sealed class Heartbeat : IConnectionHeartbeatFeature
    {
        public void OnHeartbeat(Action<object> action, object state) { }
    }

    [Fact]
    public void Set_get_replace_remove_and_enumerate_as_the_framework_collection_does()
    {
        var small = new SmallFeatureCollection();
        var reference = new FeatureCollection();
        var first = new Heartbeat();
        var second = new Heartbeat();
        var tls = new TlsConnectionFeatureStub();
        foreach (var features in new IFeatureCollection[] { small, reference })
        {
            Assert.Null(features.Get<IConnectionHeartbeatFeature>());
            features.Set<IConnectionHeartbeatFeature>(first);
            features.Set<ITlsConnectionFeature>(tls);
            for (var i = 0; i < 6; i++)
            {
                // More than the first block of four: the list grows.
                features[typeof(string).Assembly.GetTypes()[i]] = i;
            }
            features.Set<IConnectionHeartbeatFeature>(second);
            features.Set<ITlsConnectionFeature>(null);
            features.Set<ITlsConnectionFeature>(null);
        }
        Assert.Same(second, small.Get<IConnectionHeartbeatFeature>());
        Assert.Null(small.Get<ITlsConnectionFeature>());
        Assert.Equal(reference.OrderBy(f => f.Key.FullName).Select(f => (f.Key, f.Value)), small.OrderBy(f => f.Key.FullName).Select(f => (f.Key, f.Value)));
        Assert.Equal(7, small.Count());
        Assert.True(small.Revision > 0);
        Assert.False(small.IsReadOnly);
        Assert.Throws<ArgumentNullException>(() => small[null!]);
    }

    sealed class TlsConnectionFeatureStub : ITlsConnectionFeature
    {
        public System.Security.Cryptography.X509Certificates.X509Certificate2? ClientCertificate { get; set; }

        public Task<System.Security.Cryptography.X509Certificates.X509Certificate2?> GetClientCertificateAsync(CancellationToken cancellationToken) =>
            Task.FromResult(ClientCertificate);
    }
}
